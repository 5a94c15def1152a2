"""The flags the instance's Chromium really runs with, read from its process (Debian's Chromium, real launch)."""

from __future__ import annotations

from pathlib import Path

from instance.browser import AVOID_DEV_SHM_ARG, OWN_DISABLED_FEATURES, launch_options, uses_dev_shm
from instance.settings import InstanceSettings
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


def test_a_large_dev_shm_is_used_and_a_small_one_avoided(inst, tmp_path):
    # The shared instance runs with INSTANCE_DEV_SHM=auto on this machine's /dev/shm (a large tmpfs).
    assert uses_dev_shm("auto") is True
    parts = Path(f"/proc/{chromium_browser_pid(inst.process.pid)}/cmdline").read_bytes().decode().split("\0")
    assert AVOID_DEV_SHM_ARG not in parts
    small = tmp_path / "small-shm"  # an ordinary folder on the test's disk stands for a 64 MiB one only by statvfs
    assert uses_dev_shm("avoid") is False and uses_dev_shm("use", small) is True
    assert uses_dev_shm("auto", tmp_path / "missing") is False


def test_a_small_dev_shm_sends_chromium_to_tmp(monkeypatch):
    class Small:
        f_blocks, f_frsize = 64, 1024 * 1024  # Docker's default 64 MiB

    monkeypatch.setattr("instance.browser.os.statvfs", lambda _path: Small())
    options = launch_options(InstanceSettings(_env_file=None), None)
    assert AVOID_DEV_SHM_ARG in options["args"] and "ignore_default_args" not in options
    used = launch_options(InstanceSettings(_env_file=None, dev_shm="use"), None)
    assert AVOID_DEV_SHM_ARG not in used["args"] and used["ignore_default_args"] == [AVOID_DEV_SHM_ARG]


def test_a_headed_window_is_born_at_the_size_playwright_gives_it():
    # viewport plus Playwright's Linux insets: no page's first script sees a window mid-resize
    headed = launch_options(InstanceSettings(_env_file=None, viewport_width=1280, viewport_height=800), ":9")
    assert "--window-size=1288,885" in headed["args"]
    headless = launch_options(InstanceSettings(_env_file=None, browser_mode="headless"), None)
    assert not [arg for arg in headless["args"] if arg.startswith("--window-size")]
