"""A test-only kubelet: runs each pod of the API stand-in (apiserver.py) as a container on the local Docker engine.

What it does with a pod, as a kubelet would: the image, the environment (a `secretKeyRef` read from the
stand-in's Secrets), the user, the read-only root filesystem, dropped capabilities and no-new-privileges, the
memory and CPU limits, the claim as a Docker volume, emptyDirs as tmpfs (the `/dev/shm` one, medium Memory, as
the container's shm size). It reports the pod `Running` with its address as `status.podIP`, the container's
end as `Failed` or `Succeeded` with the exit code, stops the container on DELETE within the grace period, and
serves the pod's log from the container's.

The address is a loopback one of the pod's own (127.<run>.0.<n>, the container's :8000 published there), so the
gateway on the host reaches `http://<podIP>:8000` as it would a pod IP, without leaving this machine. The
container joins a Docker network too, to reach the simulator by name. Everything it makes carries LABEL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import random
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors

from tests.kube.apiserver import FakeApiServer, container_status

log = logging.getLogger(__name__)

LABEL = "io.aistudio-fleet.kubelet-standin"  # value: the run, so cleanup never touches anything else
_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "k": 1000, "M": 1000**2, "G": 1000**3}


class DockerKubelet:
    def __init__(self, server: FakeApiServer, client: docker.DockerClient, *, network: str, run: str) -> None:
        self.server, self.client, self.network, self.run = server, client, network, run
        self.octet = random.randrange(100, 200)  # 127.<octet>.0.n: apart from other runs on this machine
        self._hosts = itertools.count(2)
        self.containers: dict[str, Any] = {}  # pod name -> container
        server.on_pod_created = self.run_pod
        server.on_pod_deleted = self.delete_pod
        server.log_source = self.logs

    def container_name(self, pod_name: str) -> str:
        return f"kubelet-{self.run}-{pod_name}"

    def volume_name(self, claim: str) -> str:
        return f"kubelet-{self.run}-{claim}"

    # ---- pods --------------------------------------------------------------------------------------------

    async def run_pod(self, pod: dict[str, Any]) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        ip = f"127.{self.octet}.0.{next(self._hosts)}"
        try:
            container = await asyncio.to_thread(self._start, pod, ip)
        except docker.errors.APIError as e:  # e.g. the image is not on this engine
            reason = "ErrImageNeverPull" if isinstance(e, docker.errors.ImageNotFound) else "CreateContainerError"
            self.server.set_pod_status(ns, name, {"phase": "Pending", "containerStatuses": [
                container_status({"waiting": {"reason": reason, "message": str(e.explanation or e)}})]})
            return
        self.containers[name] = container
        started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.server.set_pod_status(ns, name, {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [container_status({"running": {"startedAt": started}}, containerID=f"docker://{container.id}")],
        })
        code = await asyncio.to_thread(self._wait, container)
        if self.server.pod(ns, name) is not None and not self.server.pod(ns, name)["metadata"].get("deletionTimestamp"):
            self.server.set_pod_status(ns, name, {
                "phase": "Succeeded" if code == 0 else "Failed", "podIP": ip,
                "containerStatuses": [container_status({"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}})],
            })

    async def delete_pod(self, pod: dict[str, Any], grace: int) -> None:
        container = self.containers.pop(pod["metadata"]["name"], None)
        if container is not None:
            await asyncio.to_thread(self._remove, container, grace)

    def _start(self, pod: dict[str, Any], ip: str) -> Any:
        spec = pod["spec"]
        (c,) = spec["containers"]
        security = c.get("securityContext") or {}
        pod_security = spec.get("securityContext") or {}
        limits = (c.get("resources") or {}).get("limits") or {}
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        mounts: dict[str, dict[str, str]] = {}
        tmpfs: dict[str, str] = {}
        shm_size = None
        uid = pod_security.get("runAsUser")
        for mount in c.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                self._volume(claim)
                mounts[self.volume_name(claim)] = {"bind": mount["mountPath"], "mode": "rw"}
            elif (volume.get("emptyDir") or {}).get("medium") == "Memory" and mount["mountPath"] == "/dev/shm":
                shm_size = _bytes(volume["emptyDir"].get("sizeLimit", "64Mi"))
            elif "emptyDir" in volume:
                owner = f",uid={uid},gid={pod_security.get('fsGroup', uid)}" if uid is not None else ""
                tmpfs[mount["mountPath"]] = f"size={_bytes(volume['emptyDir'].get('sizeLimit', '256Mi'))}{owner},mode=1777"
        kwargs: dict[str, Any] = dict(
            image=c["image"],
            name=self.container_name(pod["metadata"]["name"]),
            command=c.get("command"),
            environment=self._environment(pod["metadata"]["namespace"], c.get("env") or []),
            labels={LABEL: self.run, "io.kubernetes.pod.name": pod["metadata"]["name"]},
            network=self.network,
            ports={"8000/tcp": (ip, 8000)},
            volumes=mounts,
            tmpfs=tmpfs,
            read_only=bool(security.get("readOnlyRootFilesystem")),
            detach=True,
        )
        if uid is not None:
            kwargs["user"] = f"{uid}:{pod_security.get('runAsGroup', uid)}"
        if "ALL" in ((security.get("capabilities") or {}).get("drop") or []):
            kwargs["cap_drop"] = ["ALL"]
        if security.get("allowPrivilegeEscalation") is False:
            kwargs["security_opt"] = ["no-new-privileges"]  # seccomp RuntimeDefault is Docker's default profile
        if shm_size:
            kwargs["shm_size"] = shm_size
        if "memory" in limits:
            kwargs["mem_limit"] = kwargs["memswap_limit"] = _bytes(limits["memory"])
        if "cpu" in limits:
            kwargs["nano_cpus"] = int(_cpus(limits["cpu"]) * 1e9)
        return self.client.containers.run(**kwargs)

    def _environment(self, namespace: str, env: list[dict[str, Any]]) -> dict[str, str]:
        values = {}
        for item in env:
            if "value" in item:
                values[item["name"]] = item["value"]
                continue
            ref = item["valueFrom"]["secretKeyRef"]
            secret = self.server.items("secrets", namespace).get(ref["name"])
            if secret is None:
                raise docker.errors.APIError(f'secret "{ref["name"]}" not found')
            values[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return values

    def _volume(self, claim: str) -> None:
        try:
            self.client.volumes.get(self.volume_name(claim))
        except docker.errors.NotFound:
            self.client.volumes.create(self.volume_name(claim), labels={LABEL: self.run})

    @staticmethod
    def _wait(container: Any) -> int:
        try:
            return int(container.wait()["StatusCode"])
        except docker.errors.NotFound:
            return 137

    @staticmethod
    def _remove(container: Any, grace: int) -> None:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.stop(timeout=grace)
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)

    # ---- logs --------------------------------------------------------------------------------------------

    async def logs(self, pod: dict[str, Any], tail: int | None, follow: bool) -> AsyncIterator[str]:
        container = self.containers.get(pod["metadata"]["name"])
        if container is None:
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        stream = container.logs(stream=True, follow=follow, tail="all" if tail is None else tail)

        def pump() -> None:
            buffer = b""
            try:
                for chunk in stream:
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        loop.call_soon_threadsafe(queue.put_nowait, line.decode("utf-8", "replace"))
            except Exception:  # noqa: BLE001 - the stream was closed under it
                pass
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=pump, daemon=True, name="kubelet-logs").start()
        try:
            while (line := await queue.get()) is not None:
                yield line
        finally:
            with contextlib.suppress(Exception):
                stream.close()

    # ---- cleanup -----------------------------------------------------------------------------------------

    def remove_all(self) -> None:
        """Every container and volume of this run."""
        filters = {"label": f"{LABEL}={self.run}"}
        for container in self.client.containers.list(all=True, filters=filters):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for volume in self.client.volumes.list(filters=filters):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)


def remove_stale(client: docker.DockerClient) -> None:
    """Containers and volumes a killed run left (any run's: these are test-only)."""
    for container in client.containers.list(all=True, filters={"label": LABEL}):
        if container.status != "running":
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


def _bytes(quantity: str) -> int:
    for suffix, factor in _UNITS.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
