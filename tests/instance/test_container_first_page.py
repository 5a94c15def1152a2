"""The first page of every start of the built instance image, read at that page's own load: 20 starts in a row, a
container each. The bot-check page is the instance's AI Studio (INSTANCE_AISTUDIO_URL), so the first navigation
after the browser starts is the one measured; a sidecar from the simulator image serves it on the instance's own
`localhost` (the instance joins the sidecar's network namespace, so the page is up before the browser is).

Each start must see a sized window (outerWidth/outerHeight > 0, screen as configured), the time zone and locale
it was given, and no WebRTC candidate beside the proxy."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import docker.errors
import pytest

from tests.botcheck import sidecar
from tests.botcheck.signals import hard_signals, ice_candidates
from tests.instance.test_container import INSTANCE_IMAGE, LABEL, SIMULATOR_IMAGE, TOKEN
from tests.instance.test_container import engine  # noqa: F401 - the module's Docker fixture
from tests.polling import wait_until

pytestmark = pytest.mark.docker

STARTS = 20
BOTCHECK_DIR = Path(__file__).resolve().parents[1] / "botcheck"
GIVEN = {"INSTANCE_TIMEZONE": "Asia/Tokyo", "INSTANCE_LOCALE": "ja-JP"}
VIEWPORT, SCREEN = (1440, 900), (1920, 1080)  # the instance's defaults


def _reports(container) -> list[dict]:
    lines = container.logs(stdout=True, stderr=False).decode(errors="replace").splitlines()
    return [json.loads(line)["botcheck"] for line in lines if line.startswith('{"botcheck"')]


def _sized(report: dict) -> bool:
    (ow, oh), screen = report["at_load"]["outer"], report["at_load"]["screen"]
    return VIEWPORT[0] <= ow <= SCREEN[0] and VIEWPORT[1] < oh <= SCREEN[1] and tuple(screen[:2]) == SCREEN


def test_twenty_starts_each_see_a_sized_window_their_time_zone_and_locale_at_first_load(engine):  # noqa: F811
    tag = uuid.uuid4().hex[:8]
    # The checkout's bot-check page, mounted: the page and the checks below change together.
    holder = engine.containers.run(
        SIMULATOR_IMAGE, ["python", "-m", "tests.botcheck", "--host", "127.0.0.1", "--port", str(sidecar.PORT)],
        detach=True, name=f"aistudio-itest-firstpage-{tag}", labels=LABEL, cap_drop=["ALL"],
        security_opt=["no-new-privileges"], volumes={str(BOTCHECK_DIR): {"bind": "/app/tests/botcheck", "mode": "ro"}},
    )
    reports: list[dict] = []
    timings: list[float] = []
    try:
        wait_until(lambda: b"botcheck listening" in holder.logs(stdout=False, stderr=True), timeout=30, pause=0.1,
                   what=lambda: f"the bot-check server; its log: {holder.logs().decode(errors='replace')[-2000:]}")
        for start in range(STARTS):
            began = time.monotonic()
            inst = engine.containers.run(
                INSTANCE_IMAGE, detach=True, name=f"aistudio-itest-firstpage-{tag}-{start}", labels=LABEL,
                environment={"INSTANCE_API_TOKEN": TOKEN, "INSTANCE_AISTUDIO_URL": f"http://localhost:{sidecar.PORT}",
                             **GIVEN},
                network_mode=f"container:{holder.id}", shm_size="256m", security_opt=["no-new-privileges"],
                cap_drop=["ALL"],
            )
            try:
                found = wait_until(lambda: len(_reports(holder)) > start and _reports(holder), timeout=60, pause=0.2,
                                   what=lambda: f"start {start}'s report; instance log:\n"
                                                f"{inst.logs().decode(errors='replace')[-2000:]}")
                reports.append(found[start])
                timings.append(time.monotonic() - began)
            finally:
                try:
                    inst.remove(force=True)
                except docker.errors.NotFound:
                    pass
    finally:
        holder.remove(force=True)

    sized = [_sized(r) for r in reports]
    print(f"first page sized in {sum(sized)} of {len(reports)} starts; at load: "
          f"{[tuple(r['at_load']['outer']) for r in reports]}; start to report {min(timings):.1f}-{max(timings):.1f} s")
    assert all(sized), [r["at_load"] for r in reports]
    for report in reports:
        assert report["location"].startswith(f"http://localhost:{sidecar.PORT}/prompts/new_chat")  # the first page
        assert tuple(report["at_load"]["inner"]) == VIEWPORT
        assert (report["time_zone"], report["timezone_offset_min"]) == ("Asia/Tokyo", -540)
        assert report["intl_locale"] == "ja-JP" and report["languages"] == ["en-US", "en", "ja-JP", "ja"]
        assert report["headers"]["document"]["accept-language"].startswith("en-US,en;q=0.9,ja-JP")
        assert not ice_candidates(report), report["webrtc"]
        assert hard_signals(report["signals"]) == {}, report["signals"]
