"""The instance's browser on a bot-check page served on localhost (a secure context), on this host."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.botcheck.server import BotcheckServer
from tests.botcheck.signals import hard_signals, ice_candidates
from tests.instance.harness import RunningInstance, chromium_browser_pid, start_instance

HEADLESS_TELLS = {"headless_user_agent", "ua_brands", "ua_high_entropy", "sec_ch_ua_headers"}


@pytest.fixture
def botcheck() -> Iterator[BotcheckServer]:
    server = BotcheckServer(("127.0.0.1", 0), echo=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_botcheck(inst: RunningInstance, server: BotcheckServer) -> dict:
    # http://localhost is a secure context, so client hints and userAgentData exist as on https sites
    answer = inst.client.post("/navigate", json={"url": f"http://localhost:{server.server_port}/"})
    assert answer.is_success, answer.text
    report = server.wait_report(20)
    assert report["secure_context"] is True
    return report


def test_default_browser_shows_no_automation_signal(inst, botcheck):
    try:
        report = run_botcheck(inst, botcheck)
    finally:
        inst.client.post("/navigate", json={"target": "home"})
    assert inst.status()["browser_mode"] == "headed"
    assert hard_signals(report["signals"]) == {}, report["signals"]
    assert "HeadlessChrome" not in report["headers"]["document"]["sec-ch-ua"]
    assert report["headers"]["document"]["accept-language"].startswith("en-US,en")
    assert report["plugins"] > 0 and report["window_chrome"] is True
    # the WebRTC policy: no host or STUN-mapped candidate at all, though the page asked a STUN server that answers
    assert not [c for c in ice_candidates(report) if c[0] in ("host", "srflx", "prflx")], report["webrtc"]
    assert report["time_zone"] == "UTC" and report["intl_locale"] == "en-US"


def test_time_zone_and_locale_reach_the_page_and_the_browser_process(simulator_url, fresh_dir, botcheck):
    with start_instance(simulator_url, fresh_dir, INSTANCE_TIMEZONE="Asia/Tokyo", INSTANCE_LOCALE="ja-JP") as inst:
        report = run_botcheck(inst, botcheck)
        pid = chromium_browser_pid(inst.process.pid)
        environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
                       if "=" in item)
    assert report["time_zone"] == "Asia/Tokyo" and report["timezone_offset_min"] == -540
    assert report["intl_locale"] == "ja-JP" and report["number_locale"] == "ja-JP"
    # English first (the selectors read the English page), then the locale, as navigator.languages and the header say
    assert report["languages"] == ["en-US", "en", "ja-JP", "ja"]
    assert report["headers"]["document"]["accept-language"] == "en-US,en;q=0.9,ja-JP;q=0.8,ja;q=0.7"
    assert environ.get("TZ") == "Asia/Tokyo"  # the browser's own clock zone agrees with the page's
    assert hard_signals(report["signals"]) == {}, report["signals"]


def test_headless_shell_mode_keeps_no_headless_name_in_its_client_hints(simulator_url, fresh_dir, botcheck):
    with start_instance(simulator_url, fresh_dir, INSTANCE_BROWSER_MODE="headless-shell") as inst:
        report = run_botcheck(inst, botcheck)
    assert not HEADLESS_TELLS & set(report["signals"]), report["signals"]
    # the headless shell reads the WebRTC policy under another switch's name
    assert "webrtc_leak" not in report["signals"] and not ice_candidates(report), report["webrtc"]
    # the lighter mode's remaining tells, which the headed default does not have
    assert "plugins" in report["signals"] and "window_chrome" in report["signals"]
