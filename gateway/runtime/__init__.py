"""Runtimes: the engines that run instances, all behind `gateway.runtime.base.Runtime`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.runtime.base import (
    LABEL_INSTANCE_ID,
    LABEL_INSTANCE_NAME,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
    InstanceSpec,
    Runtime,
    RuntimeError_,
    RuntimeState,
    RuntimeUnavailable,
)

if TYPE_CHECKING:
    from gateway.settings import EngineSettings

__all__ = [
    "LABEL_INSTANCE_ID",
    "LABEL_INSTANCE_NAME",
    "LABEL_MANAGED_BY",
    "MANAGED_BY_VALUE",
    "InstanceSpec",
    "Runtime",
    "RuntimeError_",
    "RuntimeState",
    "RuntimeUnavailable",
    "build_runtime",
]


def build_runtime(settings: EngineSettings) -> Runtime:
    """The engine named by `settings.name`; imported lazily so only the chosen engine's SDK is needed."""
    instance = settings.instance
    if settings.name == "docker":
        from gateway.runtime.docker import DockerRuntime, seccomp_profile

        docker = settings.docker
        return DockerRuntime(
            network=docker.network,
            image=instance.image,
            publish_host=docker.publish_host,
            mem_limit=instance.memory,
            nano_cpus=instance.nano_cpus,
            pids_limit=instance.pids_limit,
            shm_size=instance.shm_size,
            volume_prefix=docker.volume_prefix,
            connect_mode=docker.connect_mode,
            name_prefix=docker.name_prefix,
            seccomp_profile=seccomp_profile(instance.seccomp),
            read_only_root=docker.read_only_root,
            egress=docker.egress,
            egress_allow=docker.egress_allow_entries,
        )
    if settings.name == "local":
        from gateway.runtime.local import LocalRuntime

        local = settings.local
        return LocalRuntime(base_dir=local.base_dir, python=local.python, port_range_start=local.port_range_start)
    if settings.name == "kubernetes":
        from gateway.runtime.kube_objects import PodTemplate, parse_node_selector, parse_tolerations
        from gateway.runtime.kubernetes import KubernetesRuntime

        kube = settings.kubernetes
        template = PodTemplate(
            image=instance.image,
            memory=instance.memory,
            cpus=instance.cpus,
            shm_size=instance.shm_size,
            image_pull_policy=kube.image_pull_policy,
            seccomp=kube.seccomp,
            read_only_root=kube.read_only_root,
            storage_size=kube.storage_size,
            storage_class=kube.storage_class,
            node_selector=parse_node_selector(kube.node_selector),
            tolerations=parse_tolerations(kube.tolerations),
            priority_class=kube.priority_class,
        )
        return KubernetesRuntime(
            template,
            namespace=kube.namespace,
            name_prefix=kube.name_prefix,
            kubeconfig=kube.kubeconfig,
            context=kube.context,
            api_rate=kube.api_qps,
            api_burst=kube.api_burst,
        )
    if settings.name == "fake":
        from gateway.runtime.fake import FakeRuntime

        return FakeRuntime()
    raise ValueError(f"unknown runtime {settings.name!r}")
