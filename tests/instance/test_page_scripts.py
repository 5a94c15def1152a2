"""The page scripts in instance/scripts/: each parses in Chromium exactly as the loader sends it, no file is an
orphan, every name the instance asks for exists, and each helper is written once."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from instance import page_scripts
from tests.instance.harness import require_chromium

INSTANCE = Path(page_scripts.__file__).parent
SCRIPTS = INSTANCE / "scripts"
HELPERS_FILE = SCRIPTS / f"{page_scripts.HELPERS}.js"

# Runs in the page: the text as a function expression, compiled and (for the composed ones) checked to be one.
PARSE_JS = """
([source, asFunction]) => {
  try {
    const made = asFunction ? new Function("return (\\n" + source + "\\n)")() : new Function(source);
    return asFunction && typeof made !== "function" ? "not a function: " + typeof made : null;
  } catch (error) {
    return error.name + ": " + error.message;
  }
}
"""


def asked_for() -> dict[str, list[str]]:
    """Every name passed to `page_scripts.script(...)` in the instance's code, with where it is asked for."""
    found: dict[str, list[str]] = {}
    for path in sorted(INSTANCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            if node.func.attr == "script" and isinstance(owner, ast.Name) and owner.id == "page_scripts":
                assert node.args and isinstance(node.args[0], ast.Constant), f"{path.name}:{node.lineno}: not a literal"
                found.setdefault(node.args[0].value, []).append(f"{path.name}:{node.lineno}")
    return found


def helper_names() -> list[str]:
    return re.findall(r"^const (\w+) =", HELPERS_FILE.read_text(encoding="utf-8"), re.MULTILINE)


def script_files() -> dict[str, str]:
    paths = sorted(SCRIPTS.glob("*.js"))
    return {path.stem: path.read_text(encoding="utf-8") for path in paths if path != HELPERS_FILE}


def test_every_name_the_instance_asks_for_exists() -> None:
    asked = asked_for()
    assert {"step", "wait", "probe"} <= set(asked), asked  # the scan sees the driver's and the page check's calls
    missing = {name: where for name, where in asked.items() if name not in page_scripts.names()}
    assert not missing, f"asked for, but no instance/scripts/<name>.js: {missing}"


def test_no_orphan_files() -> None:
    strays = [path.name for path in SCRIPTS.iterdir() if path.suffix != ".js" and path.name != "__pycache__"]
    assert not strays, f"files the loader never reads: {strays}"
    assert sorted(page_scripts.file_names()) == sorted(path.stem for path in SCRIPTS.glob("*.js"))
    orphans = set(page_scripts.names()) - set(asked_for())
    assert not orphans, f"scripts no instance code asks for: {sorted(orphans)}"
    assert page_scripts.USES_HELPERS <= set(page_scripts.names())


def test_each_helper_is_written_once_and_sent_where_called() -> None:
    helpers = helper_names()
    assert {"q", "shown", "sweepDialogs", "textOf"} <= set(helpers)
    assert len(helpers) == len(set(helpers))
    for name, source in script_files().items():
        for helper in helpers:
            assert not re.search(rf"\b(?:const|let|var|function)\s+{helper}\b", source), f"{name}.js redefines {helper}"
        calls = [helper for helper in helpers if re.search(rf"(?<![\w.]){helper}\s*\(", source)]
        # A script sent without the helpers that calls one would fail in the page with a ReferenceError.
        assert bool(calls) == (name in page_scripts.USES_HELPERS), f"{name}.js calls {calls}"


@pytest.fixture(scope="module")
def blank_page() -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    from instance.settings import InstanceSettings

    with sync_playwright() as playwright:
        chromium = InstanceSettings().chromium_executable
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_content("<!doctype html><title>page scripts</title>")
            yield page
        finally:
            browser.close()


@pytest.mark.browser
def test_every_script_parses_in_chromium(blank_page: Any) -> None:
    problems = {}
    helpers = HELPERS_FILE.read_text(encoding="utf-8")
    if error := blank_page.evaluate(PARSE_JS, [helpers, False]):
        problems["helpers.js"] = error
    for name, source in script_files().items():
        if error := blank_page.evaluate(PARSE_JS, [source, True]):
            problems[f"{name}.js"] = error
    for name in page_scripts.names():
        if error := blank_page.evaluate(PARSE_JS, [page_scripts.script(name), True]):
            problems[f"script({name!r}) as sent"] = error
    assert not problems, problems
    assert len(page_scripts.names()) == len(script_files())


@pytest.mark.browser
def test_a_composed_script_runs_with_its_helpers(blank_page: Any) -> None:
    # The probe calls the shared `shown`: it must be in scope once the loader has put the helpers in front.
    roles = {"title": ["title"], "body": ["body"], "bad": ["::nonsense("]}
    probed = blank_page.evaluate(page_scripts.script("probe"), [roles, ["title"], 20])
    assert probed["model"] == "page scripts"
    assert probed["roles"]["title"] == [{"selector": "title", "count": 1, "visible": False}]
    assert probed["roles"]["body"][0]["count"] == 1
    assert "css_error" in probed["roles"]["bad"][0]
