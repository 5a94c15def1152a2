"""`kubectl kustomize` for the subset deploy/kubernetes uses, in Python (no kubectl on these machines).

Supported: `resources` (files, and folders with a kustomization.yaml), `namespace`, `secretGenerator` and
`configMapGenerator` with `literals` (with `generatorOptions.disableNameSuffixHash: true`), and `patches` given
inline as JSON 6902 operations with a `target` of kind and name. Any other field is an error, so a manifest that
grows beyond what this renders fails its test instead of being half rendered.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN = {"apiVersion", "kind", "namespace", "resources", "secretGenerator", "configMapGenerator", "generatorOptions", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


class KustomizeError(Exception):
    pass


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize folder` would print, in order."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    if unknown:
        raise KustomizeError(f"{folder}: fields this renderer does not know: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources") or []:
        path = (folder / entry).resolve()
        if path.is_dir():
            objects.extend(render(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    objects.extend(_generated(spec, folder))
    for patch in spec.get("patches") or []:
        _patch(objects, patch, folder)
    if spec.get("namespace"):
        for obj in objects:
            _set_namespace(obj, spec["namespace"])
    _check_unique(objects, folder)
    return objects


def _generated(spec: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    generators = (spec.get("secretGenerator") or []) + (spec.get("configMapGenerator") or [])
    if generators and not (spec.get("generatorOptions") or {}).get("disableNameSuffixHash"):
        raise KustomizeError(f"{folder}: name suffix hashes are not rendered here; set disableNameSuffixHash")
    made = []
    for kind, items in (("Secret", spec.get("secretGenerator") or []), ("ConfigMap", spec.get("configMapGenerator") or [])):
        for item in items:
            if set(item) - {"name", "literals"}:
                raise KustomizeError(f"{folder}: generator fields beyond name and literals: {sorted(item)}")
            data = dict(literal.split("=", 1) for literal in item.get("literals") or [])
            obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": item["name"]}}
            if kind == "Secret":
                obj["type"] = "Opaque"
                obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
            else:
                obj["data"] = data
            made.append(obj)
    return made


def _patch(objects: list[dict[str, Any]], patch: dict[str, Any], folder: Path) -> None:
    target = patch.get("target") or {}
    if set(target) - {"kind", "name"} or "patch" not in patch:
        raise KustomizeError(f"{folder}: only inline patches with a kind/name target are rendered here")
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise KustomizeError(f"{folder}: only JSON 6902 patches (a list of operations) are rendered here")
    matched = [o for o in objects if o.get("kind") == target.get("kind") and o["metadata"]["name"] == target.get("name")]
    if not matched:
        raise KustomizeError(f"{folder}: patch target {target} matches nothing")
    for obj in matched:
        for op in operations:
            _apply(obj, op)


def _apply(obj: dict[str, Any], op: dict[str, Any]) -> None:
    """One JSON 6902 operation (add, replace, remove) on `obj`, in place."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    parent: Any = obj
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    kind = op["op"]
    if kind not in ("add", "replace", "remove"):
        raise KustomizeError(f"operation {kind!r} is not rendered here")
    if isinstance(parent, list):
        if kind == "add":
            parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[int(last)] = copy.deepcopy(op["value"])
        else:
            del parent[int(last)]
        return
    if kind in ("replace", "remove") and last not in parent:
        raise KustomizeError(f"{op['path']} does not exist")
    if kind == "remove":
        del parent[last]
    else:
        parent[last] = copy.deepcopy(op["value"])


def _set_namespace(obj: dict[str, Any], namespace: str) -> None:
    if obj["kind"] not in CLUSTER_SCOPED:
        obj["metadata"]["namespace"] = namespace
    if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
        for subject in obj.get("subjects") or []:
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace


def _check_unique(objects: list[dict[str, Any]], folder: Path) -> None:
    seen = set()
    for obj in objects:
        key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{folder}: {key} twice")
        seen.add(key)
