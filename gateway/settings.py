"""The gateway's one settings tree: read once in `main` (or by Alembic's env.py) and injected everywhere."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

RuntimeName = Literal["docker", "local", "fake"]
Language = Literal["zh", "en"]


class Settings(BaseSettings):
    """Every knob of the gateway; environment variables are `GATEWAY_<FIELD>` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", validate_default=True)

    # Engines and storage.
    runtime: RuntimeName = "docker"
    data_dir: Path = Path("data")
    database_url: str = ""  # empty: a SQLite file under data_dir
    migrate_on_start: bool = True

    # Listeners: loopback by default; the API port may be exposed, the admin port should not.
    api_host: str = "127.0.0.1"
    api_port: int = Field(8812, ge=0, le=65535)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(8813, ge=0, le=65535)

    # What every instance gets.
    instance_image: str = "aistudio-fleet-instance:latest"
    aistudio_url: str = "https://aistudio.google.com"
    instance_memory: str = "1g"
    instance_cpus: float = Field(1.0, gt=0)
    instance_pids_limit: int = Field(512, gt=0)
    instance_shm_size: str = "512m"

    # Docker engine.
    docker_network: str | None = None
    docker_publish_host: str | None = "127.0.0.1"
    docker_connect_mode: Literal["auto", "network", "host"] = "auto"  # host: by the port published on the host
    docker_volume_prefix: str = "aistudio-fleet-data-"
    # Container name prefix and namespace label: gateways with different prefixes never touch each other's.
    docker_name_prefix: str = "aistudio-fleet-"

    # Local engine (instance processes on this host).
    local_base_dir: Path | None = None  # default: data_dir / "local"
    local_python: str = sys.executable
    local_port_range_start: int = Field(18000, gt=0, le=65535)

    # Reconciler.
    reconcile_interval: float = Field(5.0, gt=0)
    start_timeout: float = Field(90.0, gt=0)
    stop_timeout: float = Field(10.0, ge=0)
    start_concurrency: int = Field(10, ge=1)
    probe_timeout: float = Field(3.0, gt=0)
    probe_concurrency: int = Field(32, ge=1)
    probe_failures_before_restart: int = Field(3, ge=1)
    restart_backoff_base: float = Field(2.0, ge=0)
    restart_backoff_max: float = Field(120.0, ge=0)
    max_restarts: int = Field(5, ge=0)
    restart_reset_after: float = Field(300.0, ge=0)  # running this long clears the crash count
    remove_volume_on_delete: bool = True

    # Sessions.
    legacy_session_file: Path | None = None
    max_session_bytes: int = Field(5 * 1024 * 1024, gt=0)

    # People.
    admin_token: SecretStr | None = None
    language: Language = "zh"
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{(self.data_dir / 'gateway.db').as_posix()}"
        if self.local_base_dir is None:
            self.local_base_dir = self.data_dir / "local"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def instance_nano_cpus(self) -> int:
        return int(self.instance_cpus * 1_000_000_000)
