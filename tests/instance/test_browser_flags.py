"""The flags the instance's Chromium really runs with, read from its process (Debian's Chromium, real launch)."""

from __future__ import annotations

from pathlib import Path

from instance.browser import OWN_DISABLED_FEATURES
from tests.instance.harness import chromium_browser_pid


def switch_values(pid: int, name: str) -> list[str]:
    """Every value of `--name=` on the process's command line, in order."""
    parts = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return [part.split("=", 1)[1] for part in parts if part.startswith(f"--{name}=")]


def test_the_last_disable_features_flag_keeps_playwrights_list_and_adds_ours(inst):
    values = switch_values(chromium_browser_pid(inst.process.pid), "disable-features")
    # Playwright's flag first, ours last: Chromium reads only the last one.
    assert len(values) >= 2, values
    playwright, effective = set(values[0].split(",")), set(values[-1].split(","))
    assert "MediaRouter" in playwright  # the first is Playwright's own list
    missing = playwright - effective
    assert not missing, f"Playwright disables {sorted(missing)}, which our flag drops: add them to PLAYWRIGHT_DISABLED_FEATURES"
    assert set(OWN_DISABLED_FEATURES) <= effective
