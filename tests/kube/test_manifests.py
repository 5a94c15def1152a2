"""deploy/kubernetes rendered (tests/kube/kustomize.py) and checked: every object against the Kubernetes 1.30 and 1.33
OpenAPI schemas (kubernetes-validate, strict: no unknown fields), then what schemas cannot see: selectors that
select, Secrets and settings that exist, probes on paths the gateway serves, RBAC limited to what the runtime
calls, NetworkPolicies that match the labels the runtime puts on instance pods."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from gateway.app import create_api_app
from gateway.runtime.base import InstanceSpec
from gateway.runtime.kube_objects import APP_LABELS, Names, PodTemplate, claim_body, pod_body, secret_body
from gateway.settings import Settings
from tests.kube.kustomize import KustomizeError, render

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
OVERLAYS = ["simulator", "production"]
VERSIONS = ["1.30.0", "1.33.0"]
NAMESPACE = "aistudio-fleet"
GATEWAY_LABELS = {"app.kubernetes.io/name": "aistudio-fleet-gateway"}


def _rendered(overlay: str) -> list[dict[str, Any]]:
    return render(DEPLOY / "overlays" / overlay)


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _instance_pod() -> dict[str, Any]:
    spec = InstanceSpec("3f2b1c9e-1234-4abc-9def-0123456789ab", "实例", "t", {"INSTANCE_AISTUDIO_URL": "http://x"})
    return pod_body(Names("aistudio-fleet-"), spec, NAMESPACE, PodTemplate(image="aistudio-fleet-instance:latest"))


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_schemas(overlay: str, version: str) -> None:
    objects = _rendered(overlay)
    assert len(objects) >= 11
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)  # raises ValidationError with the path


@pytest.mark.parametrize("version", VERSIONS)
def test_what_the_runtime_sends_validates_too(version: str) -> None:
    spec = InstanceSpec("3f2b1c9e-1234-4abc-9def-0123456789ab", "实例", "t")
    names, template = Names("aistudio-fleet-"), PodTemplate(image="i", storage_class="fast")
    for body in (_instance_pod(), claim_body(names, spec, NAMESPACE, template), secret_body(names, spec, NAMESPACE)):
        kubernetes_validate.validate(body, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_namespace_two_gateways_and_selectors_that_select(overlay: str) -> None:
    objects = _rendered(overlay)
    assert _one(objects, "Namespace", NAMESPACE)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(o["metadata"]["namespace"] == NAMESPACE for o in objects if o["kind"] != "Namespace")
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    gateway = _one(objects, "Deployment", "aistudio-fleet-gateway")
    assert gateway["spec"]["replicas"] == 2
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    for w in workloads:
        assert _selects(w["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]), w["metadata"]["name"]
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for service in (o for o in objects if o["kind"] == "Service"):
        assert any(_selects(service["spec"]["selector"], labels) for labels in pod_labels), service["metadata"]["name"]
    ports = {p["port"] for s in objects if s["kind"] == "Service" for p in s["spec"]["ports"]}
    assert {8812, 8813} <= ports
    budget = _one(objects, "PodDisruptionBudget", "aistudio-fleet-gateway")
    assert budget["spec"]["minAvailable"] == 1 and _selects(budget["spec"]["selector"]["matchLabels"], GATEWAY_LABELS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_runs_kubernetes_with_settings_that_exist(overlay: str) -> None:
    objects = _rendered(overlay)
    config = _one(objects, "ConfigMap", "aistudio-fleet-gateway")["data"]
    assert config["GATEWAY_RUNTIME"] == "kubernetes"
    for key in config:
        assert key.startswith("GATEWAY_") and key[8:].lower() in Settings.model_fields, key
    deployment = _one(objects, "Deployment", "aistudio-fleet-gateway")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "aistudio-fleet-gateway"
    (container,) = pod["containers"]
    for item in container["env"]:
        assert item["name"][8:].lower() in Settings.model_fields, item["name"]
    # The probes ask paths the generation listener serves, on its port.
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "api"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
    paths = {route.path for route in create_api_app(Settings(_env_file=None)).routes}
    assert {"/livez", "/readyz"} <= paths
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_demo_overlay_provides_every_secret_the_pods_read() -> None:
    objects = _rendered("simulator")
    secrets = {o["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in o["data"].items()}
               for o in objects if o["kind"] == "Secret"}
    for workload in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet")):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for item in container.get("env") or []:
                ref = (item.get("valueFrom") or {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ref["key"] in secrets[ref["name"]], (workload["metadata"]["name"], ref)
    gateway = secrets["aistudio-fleet-gateway"]
    assert len(gateway["admin-token"]) >= 16  # or the gateway refuses to listen beyond loopback
    assert "@aistudio-fleet-postgres:5432/" in gateway["database-url"]
    assert secrets["aistudio-fleet-postgres"]["password"] in gateway["database-url"]
    config = _one(objects, "ConfigMap", "aistudio-fleet-gateway")["data"]
    assert config["GATEWAY_AISTUDIO_URL"] == "http://aistudio-fleet-simulator:9000"
    _one(objects, "StatefulSet", "aistudio-fleet-postgres")
    _one(objects, "Deployment", "aistudio-fleet-simulator")


def test_production_keeps_no_secret_and_no_database() -> None:
    objects = _rendered("production")
    assert not [o for o in objects if o["kind"] in ("Secret", "StatefulSet")]
    env = _one(objects, "Deployment", "aistudio-fleet-gateway")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "GATEWAY_API_KEYS", "valueFrom": {"secretKeyRef": {"name": "aistudio-fleet-gateway", "key": "api-keys",
                                                                     "optional": True}}} in env
    assert _one(objects, "ConfigMap", "aistudio-fleet-gateway")["data"]["GATEWAY_AISTUDIO_URL"] == "https://aistudio.google.com"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_what_the_runtime_calls_in_one_namespace(overlay: str) -> None:
    objects = _rendered(overlay)
    role = _one(objects, "Role", "aistudio-fleet-gateway")
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    # That it is exactly what the runtime calls: tests/gateway/test_kubernetes_runtime.py. Here: nothing that reads
    # or changes Secrets (the gateway's own is in this namespace), no Services, no changes to pods.
    assert ("events", "list") in granted  # a pending pod's Events: the instance's start progress
    assert not {("secrets", v) for v in ("get", "list", "watch", "update", "patch")} & granted
    assert not {("pods", v) for v in ("update", "patch", "watch")} & granted
    assert {r for r, _ in granted} == {"pods", "pods/log", "persistentvolumeclaims", "secrets", "events"}
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] or rule["apiGroups"] != [""] for rule in role["rules"])
    binding = _one(objects, "RoleBinding", "aistudio-fleet-gateway")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "aistudio-fleet-gateway"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "aistudio-fleet-gateway", "namespace": NAMESPACE}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_fence_the_instances(overlay: str) -> None:
    objects = _rendered(overlay)
    instance_labels = _instance_pod()["metadata"]["labels"]
    assert APP_LABELS.items() <= instance_labels.items()
    policy = _one(objects, "NetworkPolicy", "aistudio-fleet-instances")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], instance_labels)
    (ingress,) = policy["spec"]["ingress"]
    (source,) = ingress["from"]
    assert _selects(source["podSelector"]["matchLabels"], GATEWAY_LABELS) and ingress["ports"] == [{"port": 8000, "protocol": "TCP"}]
    blocks = [to["ipBlock"] for rule in policy["spec"]["egress"] for to in rule["to"] if "ipBlock" in to]
    assert all({"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(b["except"]) for b in blocks)
    # No other policy lets instances reach Postgres; Postgres admits gateway pods alone.
    for other in (o for o in objects if o["kind"] == "NetworkPolicy" and o is not policy):
        if _selects(other["spec"]["podSelector"].get("matchLabels", {}), instance_labels):
            targets = [to.get("podSelector", {}).get("matchLabels", {}) for rule in other["spec"].get("egress", []) for to in rule["to"]]
            assert all(t.get("app.kubernetes.io/name") != "aistudio-fleet-postgres" for t in targets)
    if overlay == "simulator":
        fence = _one(objects, "NetworkPolicy", "aistudio-fleet-postgres")
        (rule,) = fence["spec"]["ingress"]
        assert [s["podSelector"]["matchLabels"] for s in rule["from"]] == [GATEWAY_LABELS]


def test_the_renderer_refuses_what_it_cannot_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(KustomizeError, match="commonLabels"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("secretGenerator: [{name: s, literals: [a=b]}]\n")
    with pytest.raises(KustomizeError, match="disableNameSuffixHash"):
        render(tmp_path)
