"""Settings come from GATEWAY_* variables; messages follow Accept-Language."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.i18n import catalog, pick_language, translate
from gateway.settings import Settings
from tests.gateway.conftest import IsolatedSettings


def test_settings_read_gateway_variables_and_default_to_sqlite_under_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in ("GATEWAY_DATABASE_URL", "GATEWAY_LEGACY_SESSION_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("GATEWAY_RUNTIME", "local")
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GATEWAY_ADMIN_PORT", "9913")
    monkeypatch.setenv("GATEWAY_INSTANCE_CPUS", "1.5")
    settings = Settings()
    assert settings.runtime == "local" and settings.admin_port == 9913
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path.as_posix()}/gateway.db"
    assert settings.local_base_dir == tmp_path / "local"
    assert settings.instance_nano_cpus == 1_500_000_000
    assert (settings.api_host, settings.api_port, settings.admin_host) == ("127.0.0.1", 8812, "127.0.0.1")
    assert settings.instance_image == "aistudio-fleet-instance:latest" and settings.language == "zh"


def test_parts_read_the_same_variables_and_cover_every_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each concern's part is filled from the flat GATEWAY_* fields; no flat field is left out of every part."""
    monkeypatch.setenv("GATEWAY_DOCKER_NETWORK", "fleet-net")
    monkeypatch.setenv("GATEWAY_WEBHOOK_ATTEMPTS", "7")
    monkeypatch.setenv("GATEWAY_QUEUE_MAX", "3")
    monkeypatch.setenv("GATEWAY_INSTANCE_BROWSER_MODE", "headless")
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.docker.network == "fleet-net" and settings.engine.docker == settings.docker
    assert settings.dispatch.queue_max == 3 and settings.dispatch.webhooks.attempts == 7
    assert settings.instance.browser_mode == "headless" and settings.local.base_dir == tmp_path / "local"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.dispatch.queue_max = 4  # type: ignore[misc]
    flat = IsolatedSettings(queue_max=9, kubernetes_name_prefix="x-", admin_port=1)  # flat keywords still work
    assert (flat.dispatch.queue_max, flat.kubernetes.name_prefix, flat.listeners.admin_port) == (9, "x-", 1)
    assert settings.model_copy(update={"task_retention": 5.0}).retention.task_retention == 5.0  # never stale
    covered = {"runtime", "database_url", "migrate_on_start", "language", "log_level"}  # read by the wiring itself
    covered.add("pace_daily_cap")  # parsed into accounts.daily_caps
    covered |= {f"result_s3_{name}" for name in ("url", "endpoint_url", "region", "access_key_id", "secret_access_key",
                                               "path_style")}  # parsed into dispatch.result_s3
    prefixes = {"instance": "instance_", "docker": "docker_", "local": "local_", "kubernetes": "kubernetes_", "webhooks": "webhook_",
                "accounts": "pace_"}
    for name in ("listeners", "instance", "docker", "local", "kubernetes", "reconcile", "sessions", "webhooks",
                 "dispatch", "inputs", "faces", "retention", "accounts", "canary", "sealing"):
        part = getattr(settings, name)
        for field in dataclasses.fields(part):
            flat_name = prefixes.get(name, "") + field.name
            covered.add(flat_name if flat_name in Settings.model_fields else field.name)
    assert set(Settings.model_fields) <= covered, set(Settings.model_fields) - covered


def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_RUNTIME", "podman")
    with pytest.raises(ValueError, match="runtime"):
        Settings()


def test_a_heartbeat_timeout_shorter_than_two_beats_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_HEARTBEAT_INTERVAL", "5")
    monkeypatch.setenv("GATEWAY_HEARTBEAT_TIMEOUT", "6")
    with pytest.raises(ValueError, match="GATEWAY_HEARTBEAT_TIMEOUT .* at least twice GATEWAY_HEARTBEAT_INTERVAL"):
        Settings()
    monkeypatch.setenv("GATEWAY_HEARTBEAT_TIMEOUT", "10")
    assert Settings().dispatch.heartbeat_timeout == 10.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, "zh"), ("", "zh"), ("en-US,en;q=0.9", "en"), ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
     ("fr-FR", "zh"), ("fr, en;q=0.5", "en"), ("en;q=0, zh;q=0.1", "zh"), ("en;q=0.2, zh;q=0.8", "zh"),
     ("en;q=abc", "zh")],
)
def test_language_follows_accept_language(header: str | None, expected: str) -> None:
    assert pick_language(header, "zh") == expected


def test_every_message_exists_in_both_languages() -> None:
    assert catalog("zh").keys() == catalog("en").keys()
    assert translate("engine_down", "en", engine="docker", reason="gone") == "The docker engine is unavailable: gone"
    assert translate("engine_down", "zh", engine="docker") .startswith("运行引擎")  # a missing parameter never breaks
