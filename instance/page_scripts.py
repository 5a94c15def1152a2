"""The page's JavaScript: one .js file per script in `instance/scripts/`, read once at import.

Each script file is one function expression, the function `page.evaluate` calls with its argument. The scripts
named in `USES_HELPERS` run in one scope with `helpers.js` (the shared `q`, `shown`, `sweepDialogs`, ...),
which is written once and prepended here, so no helper exists twice.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

HELPERS = "helpers"
# The scripts that call the helpers; the others are sent without them, as they were written.
USES_HELPERS = frozenset({"step", "upload", "run_enabled", "shows", "wait", "probe"})


def _folder() -> Traversable:
    # importlib.resources, not a path beside __file__: the files also come from an installed wheel.
    return resources.files("instance").joinpath("scripts")


def _read(name: str) -> str:
    return _folder().joinpath(f"{name}.js").read_text(encoding="utf-8")


def file_names() -> list[str]:
    """Every script file's name without `.js`, the helpers included."""
    return sorted(entry.name.removesuffix(".js") for entry in _folder().iterdir() if entry.name.endswith(".js"))


def compose(name: str, helpers: str, source: str) -> str:
    """One function for `page.evaluate`: the helpers, then the script called with the same argument."""
    prelude = helpers if name in USES_HELPERS else ""
    # Newlines around the script: its leading `//` comments must not swallow the code that follows.
    return f"(args) => {{\n{prelude}\nreturn (\n{source}\n)(args);\n}}"


def _load() -> dict[str, str]:
    helpers = _read(HELPERS)
    return {name: compose(name, helpers, _read(name)) for name in file_names() if name != HELPERS}


_SCRIPTS = _load()


def script(name: str) -> str:
    """The text to pass to `page.evaluate` for the script `scripts/<name>.js`."""
    try:
        return _SCRIPTS[name]
    except KeyError:
        raise KeyError(f"no page script {name!r} in instance/scripts/ (known: {', '.join(sorted(_SCRIPTS))})") from None


def names() -> list[str]:
    """The scripts `script` serves (every file but the helpers)."""
    return sorted(_SCRIPTS)
