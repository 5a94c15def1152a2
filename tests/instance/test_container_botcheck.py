"""The built instance image, in its default configuration, on the bot-check page: a sidecar container from the
simulator image serves the page on `localhost` inside the instance's network namespace (a secure context)."""

from __future__ import annotations

import uuid

import docker.errors
import httpx
import pytest

from tests.botcheck import sidecar
from tests.botcheck.signals import hard_signals
from tests.instance.test_container import INSTANCE_IMAGE, LABEL, SIMULATOR_IMAGE, TOKEN, _published, _wait
from tests.instance.test_container import engine  # noqa: F401 - the module's Docker fixture

pytestmark = pytest.mark.docker


def test_default_image_shows_no_automation_signal(engine):  # noqa: F811
    tag = uuid.uuid4().hex[:8]
    made = []
    try:
        inst = engine.containers.run(
            INSTANCE_IMAGE, detach=True, name=f"aistudio-itest-bot-{tag}", labels=LABEL,
            # only what the test needs: the token, and a home page that answers at once in this namespace
            environment={"INSTANCE_API_TOKEN": TOKEN, "INSTANCE_AISTUDIO_URL": f"http://localhost:{sidecar.PORT}"},
            ports={"8000/tcp": ("127.0.0.1", None)}, shm_size="256m", security_opt=["no-new-privileges"],
            cap_drop=["ALL"],
        )
        made.append(inst)
        made.append(sidecar.run_sidecar(engine, SIMULATOR_IMAGE, inst, f"aistudio-itest-botcheck-{tag}", LABEL))
        url = _published(inst, "8000/tcp")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        status = _wait(url + "/status", lambda r: r.status_code == 200 and r.json()["ready"], headers=auth).json()
        assert status["browser_mode"] == "headed"
        answer = httpx.post(url + "/navigate", json={"url": sidecar.PAGE_URL}, headers=auth, timeout=60)
        assert answer.is_success, answer.text
        report = sidecar.read_report(made[-1])
        print("bot-check signals:", report["signals"])
        assert report["secure_context"] is True
        assert hard_signals(report["signals"]) == {}, report["signals"]
        assert "HeadlessChrome" not in report["headers"]["document"]["sec-ch-ua"]
        assert "Headless" not in report["headers"]["document"]["user-agent"]
    finally:
        for container in reversed(made):
            try:
                print(f"--- logs of {container.name}:\n{container.logs(tail=40).decode(errors='replace')}")
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
