"""`python -m gateway`: one process, two listeners, stopped cleanly by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.polling import wait_until
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 15.0) -> httpx.Response:
    def answer() -> httpx.Response:
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        return httpx.get(url, timeout=1.0)

    return wait_until(answer, timeout=timeout, what=f"{url} to answer", ignore=(httpx.TransportError,), pause=0.1)


def test_two_listeners_in_one_process_and_sigterm(tmp_path: Path) -> None:
    api_port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_RUNTIME="fake", GATEWAY_DATA_DIR=str(tmp_path), GATEWAY_API_PORT=str(api_port),
        GATEWAY_ADMIN_PORT=str(admin_port), GATEWAY_RECONCILE_INTERVAL="0.1",
    )
    process = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=REPO, env=env, stderr=subprocess.PIPE)
    try:
        health = wait_until_up(f"http://127.0.0.1:{api_port}/health", process)
        assert health.json()["status"] == "healthy"
        created = httpx.post(f"http://127.0.0.1:{admin_port}/api/instances", json={"name": "one"})
        assert created.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{api_port}/health").json()["browser_instances"]["total"] == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert b"Traceback" not in process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (tmp_path / "gateway.db").is_file()


def test_refuses_a_newer_schema_with_a_clear_message(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "gateway.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        connection.execute("INSERT INTO alembic_version VALUES ('0999_future')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_RUNTIME="fake", GATEWAY_DATA_DIR=str(tmp_path), GATEWAY_API_PORT="0", GATEWAY_ADMIN_PORT="0")
    result = subprocess.run([sys.executable, "-m", "gateway"], cwd=REPO, env=env, capture_output=True, timeout=30)
    assert result.returncode == 2
    message = result.stderr.decode()
    assert "refusing to start" in message and "0999_future" in message and "Traceback" not in message


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_what_the_gateway_writes_is_its_own_alone(tmp_path: Path) -> None:
    """umask 077 at start: the database, kept results and the panel key hold tokens and prompts."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)  # as an older gateway or an image left it
    api_port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_RUNTIME="fake", GATEWAY_DATA_DIR=str(data), GATEWAY_API_PORT=str(api_port),
        GATEWAY_ADMIN_PORT=str(admin_port), GATEWAY_RECONCILE_INTERVAL="0.1",
    )
    old_umask = os.umask(0o022)  # what a shell usually hands down
    try:
        process = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=REPO, env=env, stderr=subprocess.PIPE)
    finally:
        os.umask(old_umask)
    try:
        wait_until_up(f"http://127.0.0.1:{api_port}/health", process)
        admin = f"http://127.0.0.1:{admin_port}/api/instances"
        instance_id = httpx.post(admin, json={"name": "one"}).json()["instance_id"]
        assert httpx.post(f"{admin}/{instance_id}/start").status_code == 200
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{api_port}/health").json()["browser_instances"]["available"],
                   timeout=15, what="the instance to become available", pause=0.1)
        answer = httpx.post(f"http://127.0.0.1:{api_port}/generate", json={"prompt": "a cat"}, timeout=30).json()
        assert answer["success"] is True, answer
    finally:
        process.terminate()
        process.wait(timeout=10)
    results = data / "results"
    written = [data / "gateway.db", data / "secret_key", *results.iterdir()]
    assert len(written) == 3, written  # one result file
    assert {path.name: mode(path) for path in written} == {path.name: 0o600 for path in written}
    assert mode(data) == 0o700 and mode(results) == 0o700


def test_refuses_a_short_admin_token_before_touching_anything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_RUNTIME="fake", GATEWAY_DATA_DIR=str(tmp_path), GATEWAY_ADMIN_TOKEN="sh0rt-t0ken",
               GATEWAY_API_PORT="0", GATEWAY_ADMIN_PORT="0")
    result = subprocess.run([sys.executable, "-m", "gateway"], cwd=REPO, env=env, capture_output=True, timeout=30)
    assert result.returncode == 2
    message = result.stderr.decode()
    assert "refusing to start" in message and "GATEWAY_ADMIN_TOKEN has 11 characters" in message
    assert "at least 16" in message and "sh0rt-t0ken" not in message  # the token itself stays out of the log
    assert not (tmp_path / "gateway.db").exists()


def test_the_access_log_keeps_a_signed_image_urls_path_but_not_its_signature(tmp_path: Path) -> None:
    api_port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_RUNTIME="fake", GATEWAY_DATA_DIR=str(tmp_path), GATEWAY_API_PORT=str(api_port),
               GATEWAY_ADMIN_PORT=str(admin_port), GATEWAY_LOG_LEVEL="INFO")
    process = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=REPO, env=env, stderr=subprocess.PIPE)
    signature = "5ec7e7" * 10  # the log records a request as it came, whether its signature is good or not
    path = "/v1/images/files/0b1f9a52-3c1e-4c7e-9d0a-1a2b3c4d5e6f/0.png"
    try:
        wait_until_up(f"http://127.0.0.1:{api_port}/health", process, timeout=60)  # a loaded machine starts slowly
        fetched = httpx.get(f"http://127.0.0.1:{api_port}{path}?expires=4102444800&signature={signature}", trust_env=False)
        assert fetched.status_code in (403, 404)
        keyed = httpx.get(f"http://127.0.0.1:{api_port}/v1beta/models?key=sk-in-the-query-{signature}", trust_env=False)
        assert keyed.status_code == 200  # no keys configured: any key passes, and it is still not logged
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        log = process.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert f"{path}?expires=4102444800&signature=REDACTED" in log, log[-2000:]
    assert "/v1beta/models?key=REDACTED" in log and "sk-in-the-query" not in log
    assert signature not in log
