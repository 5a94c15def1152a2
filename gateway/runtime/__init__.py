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
    from gateway.settings import Settings

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


def build_runtime(settings: Settings) -> Runtime:
    """The engine named by `settings.runtime`; imported lazily so only the chosen engine's SDK is needed."""
    if settings.runtime == "docker":
        from gateway.runtime.docker import DockerRuntime, seccomp_profile

        return DockerRuntime(
            network=settings.docker_network,
            image=settings.instance_image,
            publish_host=settings.docker_publish_host,
            mem_limit=settings.instance_memory,
            nano_cpus=settings.instance_nano_cpus,
            pids_limit=settings.instance_pids_limit,
            shm_size=settings.instance_shm_size,
            volume_prefix=settings.docker_volume_prefix,
            connect_mode=settings.docker_connect_mode,
            name_prefix=settings.docker_name_prefix,
            seccomp_profile=seccomp_profile(settings.instance_seccomp),
        )
    if settings.runtime == "local":
        from gateway.runtime.local import LocalRuntime

        assert settings.local_base_dir is not None  # filled in by Settings
        return LocalRuntime(
            base_dir=settings.local_base_dir,
            python=settings.local_python,
            port_range_start=settings.local_port_range_start,
        )
    if settings.runtime == "kubernetes":
        from gateway.runtime.kube_objects import PodTemplate
        from gateway.runtime.kubernetes import KubernetesRuntime

        template = PodTemplate(
            image=settings.instance_image,
            memory=settings.instance_memory,
            cpus=settings.instance_cpus,
            shm_size=settings.instance_shm_size,
            image_pull_policy=settings.kubernetes_image_pull_policy,
            seccomp=settings.kubernetes_seccomp,
            read_only_root=settings.kubernetes_read_only_root,
            storage_size=settings.kubernetes_storage_size,
            storage_class=settings.kubernetes_storage_class,
        )
        return KubernetesRuntime(
            template,
            namespace=settings.kubernetes_namespace,
            name_prefix=settings.kubernetes_name_prefix,
            kubeconfig=settings.kubernetes_kubeconfig,
            context=settings.kubernetes_context,
            api_rate=settings.kubernetes_api_qps,
            api_burst=settings.kubernetes_api_burst,
        )
    if settings.runtime == "fake":
        from gateway.runtime.fake import FakeRuntime

        return FakeRuntime()
    raise ValueError(f"unknown runtime {settings.runtime!r}")
