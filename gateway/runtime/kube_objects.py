"""What the `kubernetes` engine sends and how it reads what comes back: pure functions over plain dicts.

Kept apart from the client calls so that the pod spec, the names and the state mapping are tested without an
API server, and so that the runtime module holds only the flow (create, delete, wait, list).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from fleet_contract import environment as instance_env
from gateway.runtime.base import (
    LABEL_INSTANCE_ID,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
    InstanceSpec,
    RuntimePhase,
    RuntimeState,
)

# The same label keys as the docker engine; a label value cannot end in `-`, so the namespace value is trimmed.
LABEL_NAMESPACE = "io.aistudio-fleet.namespace"
# Label values are limited to 63 safe characters: the display name and the exact id live in annotations.
ANNOTATION_INSTANCE_ID = "aistudio-fleet.io/instance-id"
ANNOTATION_INSTANCE_NAME = "aistudio-fleet.io/instance-name"
ANNOTATION_SPEC_HASH = "aistudio-fleet.io/spec-hash"
APP_LABELS = {"app.kubernetes.io/name": "aistudio-fleet-instance", "app.kubernetes.io/part-of": "aistudio-fleet"}

CONTAINER = "instance"
INSTANCE_PORT = instance_env.PORT
DATA_PATH = instance_env.DATA_DIR
TOKEN_KEY = "token"
# Variables whose values stay out of the pod spec (readable to whoever may list pods): the token, and the proxy URL
# with its password. They live in the instance's Secret, under these keys.
SECRET_ENV = {instance_env.variable("api_token"): TOKEN_KEY, instance_env.variable("proxy"): "proxy"}
TOKEN_ENV = instance_env.variable("api_token")
RUN_AS = 10001  # the image's `app` user
HOME = "/home/app"  # Chromium's profile, caches and fontconfig: writable while the root filesystem is not

# /healthz is answered by the instance's HTTP server alone, never by the browser: a pod busy generating or signing in
# (minutes on one page) still answers it, and only a server that stopped answering for ~2 minutes is restarted.
LIVENESS_PROBE = {"httpGet": {"path": "/healthz", "port": INSTANCE_PORT}, "initialDelaySeconds": 30,
                  "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 6}
# Waiting reasons that do not mend by waiting longer: the instance is in error, with the reason.
FATAL_WAITING = {
    "ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName", "CrashLoopBackOff",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "PreCreateHookError",
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


# ---- names -------------------------------------------------------------------------------------------


def dns_label(text: str, max_length: int = 63) -> str:
    """`text` as a DNS label (pod, claim and secret names): itself when it is one, else a lower-cased, cleaned
    form with a short hash of the original, so two different names never meet in one cleaned form."""
    if len(text) <= max_length and _DNS_LABEL.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    cleaned = cleaned[: max_length - len(digest) - 1].strip("-")
    return f"{cleaned}-{digest}" if cleaned else f"x{digest}"


def label_value(text: str) -> str:
    """`text` as a label value (63 characters of [A-Za-z0-9-_.], alphanumeric at both ends)."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    return dns_label(text)


@dataclass(frozen=True)
class Names:
    """The names of one fleet's objects in one namespace."""

    prefix: str  # e.g. aistudio-fleet-

    @property
    def namespace_label(self) -> str:
        return label_value(self.prefix.strip("-._") or "fleet")

    def pod(self, instance_id: str) -> str:
        return dns_label(f"{self.prefix}{instance_id}")

    def claim(self, instance_id: str) -> str:
        return dns_label(f"{self.prefix}data-{instance_id}")

    def secret(self, instance_id: str) -> str:
        return dns_label(f"{self.prefix}token-{instance_id}")

    def selector(self, instance_id: str | None = None) -> dict[str, str]:
        """The label selector of the fleet's objects, or of one instance's."""
        labels = {LABEL_MANAGED_BY: MANAGED_BY_VALUE, LABEL_NAMESPACE: self.namespace_label}
        if instance_id is not None:
            labels[LABEL_INSTANCE_ID] = label_value(instance_id)
        return labels

    def metadata(self, name: str, spec: InstanceSpec, namespace: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": namespace,
            "labels": {**APP_LABELS, **self.selector(spec.instance_id)},
            "annotations": {ANNOTATION_INSTANCE_ID: spec.instance_id, ANNOTATION_INSTANCE_NAME: spec.name},
        }


# ---- quantities ----------------------------------------------------------------------------------------


def quantity(docker_size: str) -> str:
    """A Docker-style size (`1g`, `512m`, `1.5g`, `1Gi`) as a Kubernetes quantity (`1Gi`, `512Mi`)."""
    m = _SIZE.match(docker_size)
    if not m:
        raise ValueError(f"not a size: {docker_size!r}")
    number, unit = float(m.group(1)), m.group(2).lower()
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[unit]
    size = int(number * scale)
    for suffix, factor in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{suffix}"
    return str(size)


def cpu_quantity(cpus: float) -> str:
    return f"{max(1, int(round(cpus * 1000)))}m"


# ---- scheduling settings ------------------------------------------------------------------------------------

_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def parse_node_selector(text: str) -> tuple[tuple[str, str], ...]:
    """`key=value,key=value` (label keys and values as Kubernetes spells them); ValueError says which part is wrong."""
    pairs: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not _LABEL_KEY.match(key):
            raise ValueError(f"{part!r}: write label=value, e.g. node-role.example.com/browsers=true")
        if not _LABEL_VALUE.match(value) or len(value) > 63:
            raise ValueError(f"{part!r}: {value!r} is not a label value (63 characters of A-Z a-z 0-9 - _ .)")
        if key in pairs:
            raise ValueError(f"{key!r} is given twice")
        pairs[key] = value
    return tuple(pairs.items())


def parse_tolerations(text: str) -> tuple[dict[str, Any], ...]:
    """A JSON list of tolerations as the pod spec takes them; ValueError says which entry is wrong and why."""
    if not text.strip():
        return ()
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ValueError('a JSON list, e.g. [{"key": "browsers", "operator": "Exists", "effect": "NoSchedule"}]')  # noqa: TRY004 - a setting's value
    return tuple(_toleration(index, entry) for index, entry in enumerate(entries))


def _toleration(index: int, entry: Any) -> dict[str, Any]:
    where = f"toleration {index + 1}"
    if not isinstance(entry, dict) or not entry:
        raise ValueError(f"{where} is not an object")
    unknown = sorted(set(entry) - set(TOLERATION_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(TOLERATION_KEYS)}")
    operator = entry.get("operator", "Equal")
    if operator not in ("Equal", "Exists"):
        raise ValueError(f"{where}: operator must be Equal or Exists, not {operator!r}")
    key = entry.get("key")
    if key is not None and not (isinstance(key, str) and _LABEL_KEY.match(key)):
        raise ValueError(f"{where}: {key!r} is not a taint key")
    if key is None and operator != "Exists":
        raise ValueError(f"{where}: without a key the operator must be Exists")
    if operator == "Exists" and entry.get("value"):
        raise ValueError(f"{where}: the Exists operator takes no value")
    if "value" in entry and not isinstance(entry["value"], str):
        raise ValueError(f"{where}: the value must be a string")
    effect = entry.get("effect")
    if effect is not None and effect not in TAINT_EFFECTS:
        raise ValueError(f"{where}: effect must be one of {', '.join(TAINT_EFFECTS)}, not {effect!r}")
    seconds = entry.get("tolerationSeconds")
    if seconds is not None and (not isinstance(seconds, int) or isinstance(seconds, bool) or effect != "NoExecute"):
        raise ValueError(f"{where}: tolerationSeconds is a whole number of seconds, with the NoExecute effect only")
    return dict(entry)


def check_priority_class(name: str) -> str:
    """A PriorityClass name (a DNS subdomain); the class itself must exist in the cluster (the API server checks)."""
    if len(name) > 253 or not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name):
        raise ValueError(f"{name!r} is not a PriorityClass name (lower-case letters, digits, '-' and '.')")
    return name


# ---- what is sent ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodTemplate:
    """The engine's settings that shape every instance pod."""

    image: str
    memory: str = "1g"  # Docker-style, as GATEWAY_INSTANCE_MEMORY
    cpus: float = 1.0
    shm_size: str = "512m"
    image_pull_policy: str = "IfNotPresent"
    seccomp: str = "RuntimeDefault"  # or Localhost:<profile under the kubelet's seccomp root>
    read_only_root: bool = True
    termination_grace: int = 30
    storage_size: str = "1Gi"
    storage_class: str | None = None
    node_selector: tuple[tuple[str, str], ...] = ()  # GATEWAY_KUBERNETES_NODE_SELECTOR, checked by the settings
    tolerations: tuple[dict[str, Any], ...] = ()  # GATEWAY_KUBERNETES_TOLERATIONS
    priority_class: str | None = None  # GATEWAY_KUBERNETES_PRIORITY_CLASS

    def seccomp_profile(self) -> dict[str, str]:
        kind, _, profile = self.seccomp.partition(":")
        if kind == "Localhost":
            if not profile:
                raise ValueError("a Localhost seccomp profile needs its path: Localhost:profiles/instance.json")
            return {"type": "Localhost", "localhostProfile": profile}
        if kind not in ("RuntimeDefault", "Unconfined"):
            raise ValueError(f"seccomp must be RuntimeDefault, Unconfined or Localhost:<path>, not {self.seccomp!r}")
        return {"type": kind}


def secret_body(names: Names, spec: InstanceSpec, namespace: str) -> dict[str, Any]:
    """The instance's token (and proxy URL), so they never stand in the pod spec."""
    meta = names.metadata(names.secret(spec.instance_id), spec, namespace)
    data = {key: spec.env[name] for name, key in SECRET_ENV.items() if spec.env.get(name)}
    data[TOKEN_KEY] = spec.token
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "stringData": data}


def claim_body(names: Names, spec: InstanceSpec, namespace: str, template: PodTemplate) -> dict[str, Any]:
    """The instance's /data (its login): no owner, so it outlives every pod of the instance."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": names.metadata(names.claim(spec.instance_id), spec, namespace),
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": template.storage_size}}},
    }
    if template.storage_class:
        body["spec"]["storageClassName"] = template.storage_class
    return body


def pod_body(names: Names, spec: InstanceSpec, namespace: str, template: PodTemplate) -> dict[str, Any]:
    memory, cpu = quantity(template.memory), cpu_quantity(template.cpus)
    env = [{"name": k, "value": v} for k, v in sorted(spec.env.items()) if k not in SECRET_ENV]
    hidden = [k for k in SECRET_ENV if k == TOKEN_ENV or spec.env.get(k)]  # as secret_body stores them
    env += [{"name": k, "valueFrom": {"secretKeyRef": {"name": names.secret(spec.instance_id), "key": SECRET_ENV[k]}}}
            for k in hidden]
    mounts = [
        {"name": "data", "mountPath": DATA_PATH},
        {"name": "tmp", "mountPath": "/tmp"},  # Xvfb's socket, Playwright's and Chromium's temporary files
        {"name": "home", "mountPath": HOME},
        {"name": "shm", "mountPath": "/dev/shm"},  # Chromium's renderers share memory here; 64 MiB by default
    ]
    volumes = [
        {"name": "data", "persistentVolumeClaim": {"claimName": names.claim(spec.instance_id)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        {"name": "home", "emptyDir": {"sizeLimit": "512Mi"}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": quantity(template.shm_size)}},
    ]
    container = {
        "name": CONTAINER,
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "ports": [{"name": "http", "containerPort": INSTANCE_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": template.read_only_root,
            "capabilities": {"drop": ["ALL"]},
        },
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": INSTANCE_PORT}, "periodSeconds": 10},
        "livenessProbe": LIVENESS_PROBE,
        "volumeMounts": mounts,
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": names.metadata(names.pod(spec.instance_id), spec, namespace),
        "spec": {
            "restartPolicy": "Never",  # the reconciler restarts, with its backoff and its limit, as with Docker
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,  # no other service's address in the browser's environment
            "terminationGracePeriodSeconds": template.termination_grace,
            "securityContext": {
                "runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                "seccompProfile": template.seccomp_profile(),
            },
            "containers": [container],
            "volumes": volumes,
        },
    }
    if template.node_selector:
        pod["spec"]["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        pod["spec"]["tolerations"] = [dict(t) for t in template.tolerations]
    if template.priority_class:
        pod["spec"]["priorityClassName"] = template.priority_class
    pod["metadata"]["annotations"][ANNOTATION_SPEC_HASH] = _hash(pod["spec"])
    return pod


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


# ---- what comes back ------------------------------------------------------------------------------------


def instance_id_of(obj: dict[str, Any]) -> str | None:
    meta = obj.get("metadata") or {}
    return (meta.get("annotations") or {}).get(ANNOTATION_INSTANCE_ID) or (meta.get("labels") or {}).get(LABEL_INSTANCE_ID)


def pod_state(pod: dict[str, Any]) -> RuntimeState:
    """The runtime's view of one pod.

    A pod on its way up (being scheduled, pulling its image, creating its container) counts as `running`
    without an endpoint: the reconciler then waits for its IP instead of calling the start a failure. What
    does not mend by waiting (image not found, crash loop, unschedulable, evicted) is `exited`, with the reason
    in `detail`.
    """
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    instance_id = instance_id_of(pod) or ""
    handle = meta.get("name")

    def state(phase: RuntimePhase, detail: str, *, exit_code: int | None = None, endpoint: str | None = None,
              preparing: bool = False) -> RuntimeState:
        return RuntimeState(instance_id, phase, handle=handle, endpoint=endpoint, exit_code=exit_code, detail=detail,
                            preparing=preparing)

    phase = status.get("phase") or "Pending"
    container = _container_status(status)
    if meta.get("deletionTimestamp"):
        disruption = _condition(status, "DisruptionTarget")
        if disruption and disruption.get("status") == "True":
            return state("exited", _say("evicted", disruption.get("reason"), disruption.get("message")))
        return state("exited", "terminating: the pod is being deleted")
    if phase == "Failed" and status.get("reason"):  # Evicted, Preempted, OutOfmemory, NodeShutdown, ...
        word = "evicted" if status["reason"] == "Evicted" else status["reason"]
        return state("exited", _say(word, None, status.get("message")), exit_code=_exit_code(container))
    if phase in ("Failed", "Succeeded"):
        return _terminated(state, container, phase)
    if phase == "Unknown":
        return state("exited", _say("node unreachable", None, status.get("message") or "pod phase Unknown"))
    waiting = ((container or {}).get("state") or {}).get("waiting") or {}
    if waiting.get("reason") in FATAL_WAITING:
        last = ((container or {}).get("lastState") or {}).get("terminated") or {}
        code = last.get("exitCode")
        message = waiting.get("message") or (f"last exit code {code}" if code is not None else "")
        return state("exited", _say(waiting["reason"], None, message), exit_code=code)
    terminated = ((container or {}).get("state") or {}).get("terminated")
    if terminated:  # the container ended and the pod has not caught up yet
        return _terminated(state, container, "Failed")
    if phase == "Pending":
        scheduled = _condition(status, "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return state("exited", _say("unschedulable", None, scheduled.get("message")))
        return state("running", _pending_detail(waiting, scheduled), preparing=True)
    ip = status.get("podIP")
    if not ip or waiting:  # a Running pod whose container still waits (e.g. its first start)
        return state("running", "pending: waiting for the pod's address", preparing=True)
    host = f"[{ip}]" if ":" in ip else ip
    return state("running", "running", endpoint=f"http://{host}:{INSTANCE_PORT}")


def _pending_detail(waiting: dict[str, Any], scheduled: dict[str, Any] | None) -> str:
    """What a pending pod is doing: being scheduled, or its container's waiting reason (ContainerCreating while the
    image is pulled), with the message the kubelet gave."""
    if not waiting.get("reason") and (scheduled is None or scheduled.get("status") != "True"):
        message = (scheduled or {}).get("message")
        return f"pending: scheduling: {message}" if message else "pending: scheduling"
    reason = waiting.get("reason") or "starting"
    return f"pending: {reason}: {waiting['message']}" if waiting.get("message") else f"pending: {reason}"


EVENTS_SHOWN = 3  # the newest of a pod's Events, in a preparing or failed pod's detail


def with_events(state: RuntimeState, events: list[dict[str, Any]]) -> RuntimeState:
    """The state with the pod's newest Events (Scheduled, Pulling, Pulled, Failed, FailedScheduling, BackOff)."""
    said = [_event_text(e) for e in sorted(events, key=_event_time)[-EVENTS_SHOWN:]]
    said = [text for text in said if text]
    if not said:
        return state
    return dataclasses.replace(state, detail=f"{state.detail} · events: " + " | ".join(said))


def _event_time(event: dict[str, Any]) -> str:
    series = (event.get("series") or {}).get("lastObservedTime")
    meta = event.get("metadata") or {}
    return series or event.get("lastTimestamp") or event.get("eventTime") or meta.get("creationTimestamp") or ""


def _event_text(event: dict[str, Any]) -> str:
    reason, message = event.get("reason") or "", (event.get("message") or "").strip()
    count = event.get("count") or (event.get("series") or {}).get("count")
    text = f"{reason}: {message}" if reason and message else reason or message
    return f"{text} (x{count})" if text and count and count > 1 else text


def _terminated(state: Any, container: dict[str, Any] | None, phase: str) -> RuntimeState:
    terminated = ((container or {}).get("state") or {}).get("terminated") or {}
    code = terminated.get("exitCode")
    reason = terminated.get("reason") or phase
    if reason == "OOMKilled":
        return state("exited", "killed: out of memory (raise the memory limit)", exit_code=code)
    detail = f"exited with code {code}" if code is not None else f"pod {phase.lower()}"
    if reason not in ("Error", "Completed", phase):
        detail += f" ({reason})"
    if terminated.get("message"):
        detail += f": {terminated['message']}"
    return state("exited", detail, exit_code=code)


def _container_status(status: dict[str, Any]) -> dict[str, Any] | None:
    for c in status.get("containerStatuses") or []:
        if c.get("name") == CONTAINER:
            return c
    return None


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _exit_code(container: dict[str, Any] | None) -> int | None:
    return (((container or {}).get("state") or {}).get("terminated") or {}).get("exitCode")


def _say(word: str, reason: str | None, message: str | None) -> str:
    text = word if not reason or reason == word else f"{word} ({reason})"
    return f"{text}: {message}" if message else text
