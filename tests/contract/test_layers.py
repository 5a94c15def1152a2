"""The house's arrows point down: no module of the gateway imports one of a higher layer, and no two modules
import each other. Read from the code's own import statements, so a new back-up arrow fails here first."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Top to bottom; a module may import its own layer's and lower layers' modules.
LAYERS: list[tuple[str, ...]] = [
    ("gateway.app", "gateway.__main__", "gateway.cli"),
    ("gateway.api", "gateway.panel"),
    ("gateway.legacy",),
    ("gateway.services",),
    ("gateway.dispatcher", "gateway.reconciler", "gateway.retention", "gateway.canary"),
    ("gateway.instance_client", "gateway.proxy_probe", "gateway.runtime", "gateway.db", "gateway.signing", "gateway.settings",
     "gateway.image_types", "gateway.bounded_http",
     "gateway.accounts", "gateway.errors", "gateway.i18n", "gateway.addresses", "gateway"),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in (REPO / "gateway").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def import_edges(found: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for name, path in found.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            # A package's own submodules may be imported through it (`from gateway.dispatcher import outcomes`).
            edges[name] |= {t for t in targets if t in found and t != name and not name.startswith(t + ".")}
    return edges


def layer_of(module: str) -> int:
    for index, group in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in group if prefix != "gateway"):
            return index
    return len(LAYERS) - 1  # gateway/__init__ and the plain modules beside it


def test_no_import_runs_from_a_lower_layer_to_a_higher_one() -> None:
    edges = import_edges(modules())
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if layer_of(b) < layer_of(a))
    assert upward == []


def test_no_two_modules_import_each_other() -> None:
    edges = import_edges(modules())
    mutual = sorted(f"{a} <-> {b}" for a, targets in edges.items() for b in targets if a < b and a in edges.get(b, ()))
    assert mutual == []


def test_the_layers_name_every_part_of_the_gateway() -> None:
    parts = {p.name for p in (REPO / "gateway").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    parts |= {p.stem for p in (REPO / "gateway").glob("*.py") if p.stem != "__init__"}
    named = {prefix.split(".")[1] for group in LAYERS for prefix in group if prefix != "gateway"}
    assert parts - named - {"__main__"} == set()
