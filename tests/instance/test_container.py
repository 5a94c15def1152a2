"""The built instance image as a real container, against the simulator in a container on one network."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import uuid
from collections.abc import Iterator

import docker
import docker.errors
import httpx
import pytest

from instance.images import reencode
from tests.conftest import skip_or_fail
from tests.instance.harness import b64, png_bytes, png_size, signed_in_state
from tests.simulator.images import image_size
from tests.polling import wait_until

pytestmark = pytest.mark.docker

INSTANCE_IMAGE = os.environ.get("AISTUDIO_INSTANCE_IMAGE", "aistudio-fleet-instance:latest")
SIMULATOR_IMAGE = os.environ.get("AISTUDIO_SIMULATOR_IMAGE", "aistudio-fleet-simulator:latest")
LABEL = {"io.aistudio-fleet.test": "instance-container"}
TOKEN = "container-token-42"


def _published(container, port: str) -> str:
    def bindings() -> list | None:
        container.reload()
        return container.ports.get(port)

    def what() -> str:
        return f"{container.name} to publish {port}; logs:\n{container.logs().decode()[-2000:]}"

    found = wait_until(bindings, timeout=15, what=what)
    return f"http://127.0.0.1:{found[0]['HostPort']}"


def _wait(url: str, ok, timeout: float = 60, headers: dict | None = None) -> httpx.Response:
    last_text = ""

    def answer() -> httpx.Response:
        nonlocal last_text
        response = httpx.get(url, headers=headers, timeout=3)
        last_text = response.text
        return response

    return wait_until(answer, until=ok, timeout=timeout, what=lambda: f"{url} (last body: {last_text[:500]!r})",
                      ignore=(httpx.HTTPError,), pause=0.1)


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        client.images.get(INSTANCE_IMAGE)
        client.images.get(SIMULATOR_IMAGE)
    except Exception as exc:  # noqa: BLE001 - any reason means "no engine or no images"
        skip_or_fail(f"Docker engine or images unavailable: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def pair(engine) -> Iterator[dict]:
    """A network with the simulator and one instance container on it, both published on loopback."""
    tag = uuid.uuid4().hex[:8]
    network = engine.networks.create(f"aistudio-itest-{tag}", labels=LABEL)
    sim_name = f"aistudio-itest-sim-{tag}"
    made = []
    try:
        sim = engine.containers.run(SIMULATOR_IMAGE, detach=True, name=sim_name, network=network.name,
                                    labels=LABEL, ports={"9000/tcp": ("127.0.0.1", None)})
        made.append(sim)
        sim_url = _published(sim, "9000/tcp")
        _wait(sim_url + "/_sim/record", lambda r: r.status_code == 200)
        volume = engine.volumes.create(f"aistudio-itest-data-{tag}", labels=LABEL)
        inst = engine.containers.run(
            INSTANCE_IMAGE, detach=True, name=f"aistudio-itest-inst-{tag}", network=network.name, labels=LABEL,
            environment={"INSTANCE_AISTUDIO_URL": f"http://{sim_name}:9000", "INSTANCE_API_TOKEN": TOKEN,
                         "INSTANCE_SIGNIN_URL": f"http://{sim_name}:9000/ServiceLogin?continue={{continue}}"},
            ports={"8000/tcp": ("127.0.0.1", None)}, volumes={volume.name: {"bind": "/data", "mode": "rw"}},
            shm_size="256m", security_opt=["no-new-privileges"], cap_drop=["ALL"],
        )
        made.append(inst)
        url = _published(inst, "8000/tcp")
        yield {"sim": sim_url, "sim_host": sim_name, "url": url, "container": inst, "volume": volume}
    finally:
        for container in made:
            try:
                print(f"--- logs of {container.name}:\n{container.logs(tail=60).decode(errors='replace')}")
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
        for volume in engine.volumes.list(filters={"label": "io.aistudio-fleet.test=instance-container"}):
            volume.remove(force=True)
        network.remove()


def _auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


def _read_volume_file(container, path: str) -> bytes:
    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        return tar.extractfile(tar.getmembers()[0]).read()


def test_container_runs_non_root_and_guards_its_session(pair):
    container = pair["container"]
    assert container.exec_run("id -u").output.strip() == b"10001"
    assert _wait(pair["url"] + "/healthz", lambda r: r.status_code == 200).json() == {"ok": True}
    assert httpx.get(pair["url"] + "/session").status_code == 401
    status = _wait(pair["url"] + "/status", lambda r: r.status_code == 200 and r.json()["ready"], headers=_auth())
    assert status.json()["login_state"] == "needs_login"  # a new volume holds no session


def test_imported_session_then_a_generation_with_references(pair):
    state = signed_in_state("http://" + pair["sim_host"] + ":9000", "acct-container")
    answer = httpx.put(pair["url"] + "/session", json=state, headers=_auth(), timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["login_state"] == "logged_in"
    refs = [png_bytes(50, 40, (1, 2, 3)), png_bytes(30, 60, (200, 100, 0))]
    prompt = "一座雪山下的小木屋，黄昏"
    result = httpx.post(pair["url"] + "/generate", headers=_auth(), timeout=120, json={
        "prompt": prompt, "aspect_ratio": "21:9", "reference_images_b64": [b64(r) for r in refs]}).json()
    assert result["success"], result
    record = httpx.get(pair["sim"] + "/_sim/record").json()["generations"][-1]
    # The size the page made for the image's default model: 1K (1024 wide) for gemini-nano-banana-2.1, the
    # page's 512 for a model without sizes (an instance image built before the catalogue moved on).
    assert png_size(base64.b64decode(result["images_b64"][0])) == image_size("21:9", record["image_size"])
    assert (record["account"], record["prompt"], record["aspect_ratio"]) == ("acct-container", prompt, "21:9")
    reencoded = [reencode(r, i, 40_000_000).data for i, r in enumerate(refs)]  # what the instance gives the page
    assert [u["sha256"] for u in record["uploads"]] == [hashlib.sha256(r).hexdigest() for r in reencoded]


def test_session_is_on_the_volume_after_docker_stop(pair):
    container = pair["container"]
    container.stop(timeout=20)
    saved = json.loads(_read_volume_file(container, "/data/storage_state.json"))
    assert {c["name"]: c["value"] for c in saved["cookies"]}.get("SID") == "acct-container"
    container.start()
    url = _published(container, "8000/tcp")
    status = _wait(url + "/status", lambda r: r.status_code == 200 and r.json()["ready"], headers=_auth())
    assert status.json()["login_state"] == "logged_in"
