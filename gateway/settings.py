"""The gateway's one settings tree: read once in `main` (or by Alembic's env.py), then handed out by concern.

`Settings` is the single reader of the environment (flat fields, variables `GATEWAY_<FIELD>`); each module gets
only its part (`settings.dispatch`, `settings.docker`, ...): a frozen dataclass whose fields are the flat fields
of that concern, named without the part's prefix (`GATEWAY_DOCKER_NETWORK` is `settings.docker.network`).
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet_contract import catalogue
from fleet_contract.catalogue import AliasError
from fleet_contract.proxy import ProxyURLError, normalize_proxy
from fleet_contract.regional import RegionalError, normalize_locale, normalize_timezone
from gateway.accounts.policy import CapError, parse_daily_caps
from gateway.runtime.egress import parse_allow
from gateway.runtime.kube_objects import check_priority_class, parse_node_selector, parse_tolerations

# GATEWAY_CANARY_INTERVAL in hours (up to a week), GATEWAY_CANARY_CHECK_INTERVAL in minutes (up to a day).
CANARY_RANGES = {"canary_interval": (1.0, 168.0, "hours"), "canary_check_interval": (1.0, 1440.0, "minutes")}

RuntimeName = Literal["docker", "local", "kubernetes", "fake"]
ResultStoreName = Literal["auto", "database", "files", "s3"]
StoreKind = Literal["database", "files", "s3"]
BrowserMode = Literal["headed", "headless", "headless-shell"]
ADMIN_TOKEN_MIN_LENGTH = 16
Language = Literal["zh", "en"]


def _default_start_concurrency() -> int:
    # Chromium's start is CPU-bound: many more at once than cores only slows each of them (ten on 2 cores:
    # the last ready after 15.4 s at 10 at once, 12.1 s at 4), but a few slots stay free beside a hung start.
    return max(4, 2 * (os.cpu_count() or 1))


def fernet_key(key: str) -> bool:
    """A Fernet key: 32 bytes in URL-safe base64 (44 characters), as `Fernet.generate_key()` makes them."""
    try:
        return len(key) == 44 and len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32
    except (ValueError, UnicodeEncodeError):
        return False


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


# The parts. Each field's value comes from the flat field `<prefix><name>` (or `<name>`): see Settings._part.


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """Both listeners: where they bind, which Host names they answer, and who may call them."""

    api_host: str
    api_port: int
    admin_host: str
    admin_port: int
    allowed_hosts: str
    api_keys: SecretStr | None
    admin_token: SecretStr | None
    admin_session_hours: float
    secret_key: SecretStr | None
    data_dir: Path  # where a generated secret key is kept

    @property
    def allowed_host_names(self) -> frozenset[str]:
        """GATEWAY_ALLOWED_HOSTS as lower-case names (ports and IPv6 brackets dropped); may hold "*"."""
        return frozenset(name for part in self.allowed_hosts.split(",") if (name := host_name(part)))

    @property
    def api_key_list(self) -> list[str]:
        """The generation API's keys; empty means the API is open."""
        return [key.strip() for key in _secret(self.api_keys).split(",") if key.strip()]

    @property
    def admin_credential(self) -> str | None:
        """The admin token when one is set (an empty value counts as none)."""
        return _secret(self.admin_token) or None

    def admin_token_problem(self) -> str | None:
        """Why the admin token must not be used, or None: a short one is guessed too easily."""
        token = self.admin_credential
        if token is None or len(token) >= ADMIN_TOKEN_MIN_LENGTH:
            return None
        return (
            f"GATEWAY_ADMIN_TOKEN has {len(token)} characters; use at least {ADMIN_TOKEN_MIN_LENGTH}, e.g. "
            "`openssl rand -hex 24` (deploy/up.sh writes such a token into deploy/.env)"
        )

    def admin_exposure_problem(self) -> str | None:
        """Why the admin listener must not start as configured, or None: beyond loopback it needs a credential."""
        if self.admin_credential or _is_loopback(self.admin_host):
            return None
        return (
            f"the admin panel and management API would listen on {self.admin_host}:{self.admin_port}, beyond "
            "loopback, with no credential: set GATEWAY_ADMIN_TOKEN, or bind GATEWAY_ADMIN_HOST=127.0.0.1"
        )


@dataclass(frozen=True, slots=True)
class SealingSettings:
    """The key that seals secrets in the database (gateway/db/sealing.py): configured, a file, or made once."""

    encryption_key: SecretStr | None
    encryption_key_file: Path | None
    data_dir: Path  # where a made key is kept when none is configured

    @property
    def configured_keys(self) -> str:
        return _secret(self.encryption_key)


@dataclass(frozen=True, slots=True)
class InstanceSettings:
    """What every instance gets, whatever the engine (GATEWAY_INSTANCE_* and the instance's environment)."""

    image: str
    aistudio_url: str
    signin_url: str | None
    browser_mode: BrowserMode | None
    default_proxy: SecretStr | None
    default_timezone: str
    default_locale: str
    memory: str
    cpus: float
    pids_limit: int
    shm_size: str
    seccomp: str
    remove_volume_on_delete: bool
    proxy_test_target: str
    proxy_test_timeout: float

    @property
    def default_proxy_url(self) -> str | None:
        return self.default_proxy.get_secret_value() if self.default_proxy is not None else None

    @property
    def nano_cpus(self) -> int:
        return int(self.cpus * 1_000_000_000)


@dataclass(frozen=True, slots=True)
class DockerSettings:
    """The Docker engine (GATEWAY_DOCKER_*)."""

    network: str | None
    publish_host: str | None
    connect_mode: Literal["auto", "network", "host"]
    volume_prefix: str
    name_prefix: str
    egress: Literal["auto", "on", "off"]
    egress_allow: str
    read_only_root: bool

    @property
    def egress_allow_entries(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.egress_allow.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class LocalSettings:
    """The local engine: instance processes on this host (GATEWAY_LOCAL_*)."""

    base_dir: Path
    python: str
    port_range_start: int


@dataclass(frozen=True, slots=True)
class KubernetesSettings:
    """The Kubernetes engine (GATEWAY_KUBERNETES_*)."""

    namespace: str | None
    kubeconfig: Path | None
    context: str | None
    name_prefix: str
    storage_size: str
    storage_class: str | None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"]
    seccomp: str
    read_only_root: bool
    api_qps: float
    api_burst: int
    pull_timeout: float  # the reconciler's prepare_timeout (ReconcileSettings)
    node_selector: str  # key=value,... (kube_objects.parse_node_selector)
    tolerations: str  # a JSON list (kube_objects.parse_tolerations)
    priority_class: str | None


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What `build_runtime` needs: the engine's name, what every instance gets, and each engine's own part."""

    name: RuntimeName
    instance: InstanceSettings
    docker: DockerSettings
    local: LocalSettings
    kubernetes: KubernetesSettings


@dataclass(frozen=True, slots=True)
class ReconcileSettings:
    """The reconciler's loop: passes, starts, probes and restarts."""

    reconcile_interval: float
    start_timeout: float
    stop_timeout: float
    prepare_timeout: float  # how long a container may take to start (image pull, scheduling); 0: no limit
    start_concurrency: int
    probe_timeout: float
    probe_concurrency: int
    probe_failures_before_restart: int
    restart_backoff_base: float
    restart_backoff_max: float
    max_restarts: int
    restart_reset_after: float


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Google sessions: login checks, expiry warnings, uploads and the legacy session file."""

    login_check_interval: float
    session_warn_before: float
    legacy_session_file: Path | None
    max_session_bytes: int


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Webhook deliveries (GATEWAY_WEBHOOK_*) and whether callback URLs may name private addresses."""

    secret: SecretStr | None
    attempts: int
    backoff: float
    timeout: float
    fetch_private_addresses: bool

    @property
    def secret_value(self) -> str:
        """The signing key; empty when none is set (callbacks are then refused)."""
        return _secret(self.secret)


@dataclass(frozen=True, slots=True)
class AccountSettings:
    """The accounts: pacing, daily caps, rate-limit pauses and how long the ledger keeps its days."""

    pause: float = 0.0  # seconds an account rests between two of its tasks (0: no pacing)
    jitter: float = 0.5  # pauses vary by up to this fraction, so accounts do not beat in step
    per_exit: int = 0  # tasks at once through one proxy exit (0: no limit)
    daily_caps: dict[str, int] = dataclasses.field(default_factory=dict)  # model (or "*") -> cap per account
    rate_limit_pause: float = 30.0  # the first rate-limit pause of a model on an account; doubles each time
    rate_limit_pause_max: float = 900.0
    usage_days: int = 30  # days of usage kept; the learned capacity looks this far back


@dataclass(frozen=True, slots=True)
class S3StoreSettings:
    """GATEWAY_RESULT_STORE=s3: the bucket and key prefix (from GATEWAY_RESULT_S3_URL) and how to reach it.
    Empty credentials and region: the standard AWS chain (AWS_* variables, the shared credentials file, a role)."""

    bucket: str
    prefix: str  # "" or ending in "/"
    endpoint_url: str | None
    region: str | None
    access_key_id: str | None
    secret_access_key: str | None
    path_style: bool  # bucket in the path (MinIO and most S3-compatible servers), not in the host name


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """The dispatcher: the queue, leases, attempts, accounts, results and webhooks."""

    queue_max: int
    queue_wait_timeout: float
    task_wait_timeout: float
    queue_poll_interval: float
    generation_timeout: float
    lease_margin: float
    max_attempts: int
    task_result_ttl: float
    store_sync_results: bool
    result_store: StoreKind  # GATEWAY_RESULT_STORE with `auto` resolved
    reconcile_interval: float  # how soon the reconciler probes a suspect instance: bounds how long it is avoided
    data_dir: Path  # results and request files live below it
    webhooks: WebhookSettings
    heartbeat_interval: float  # how often this gateway marks itself alive (and looks for dead ones)
    heartbeat_timeout: float  # a gateway silent this long is dead: a live one takes its queued tasks and webhooks
    accounts: AccountSettings = dataclasses.field(default_factory=AccountSettings)
    result_s3: S3StoreSettings | None = None  # with GATEWAY_RESULT_STORE=s3


@dataclass(frozen=True, slots=True)
class InputSettings:
    """Limits on what one generation request may carry."""

    max_prompt_chars: int
    max_reference_images: int
    max_reference_bytes: int
    max_body_bytes: int
    # GATEWAY_MODEL_ALIASES, read: a name a client sends -> the current model that runs it (checked at start).
    model_aliases: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FaceSettings:
    """The OpenAI and Gemini faces on :8812: image counts, image URLs, fetched images and streaming."""

    max_images_per_request: int
    public_url: str | None
    image_url_ttl: float
    task_result_ttl: float  # a signed image URL never outlives its result
    store_sync_results: bool  # `response_format=url` needs the result kept
    fetch_timeout: float
    fetch_private_addresses: bool
    sse_keepalive_interval: float
    chat_context_chars: int  # earlier requests of a conversation carried into the new turn's prompt


@dataclass(frozen=True, slots=True)
class CanarySettings:
    """The canary (gateway/canary.py): how often a model's small generation and its free page check run, and
    where a pass-to-fail change is POSTed (signed like the task webhooks)."""

    canary_interval: float  # hours between two canary generations of one model (each spends one image)
    canary_check_interval: float  # minutes between two page checks of one model (free: no generation)
    alert_webhook: str | None
    webhooks: WebhookSettings

    @property
    def generation_seconds(self) -> float:
        return self.canary_interval * 3600

    @property
    def check_seconds(self) -> float:
        return self.canary_check_interval * 60


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """How long finished tasks, events and result files are kept, and how often old ones are looked for."""

    task_retention: float
    retention_interval: float


Part = TypeVar("Part")


class Settings(BaseSettings):
    """Every knob of the gateway; environment variables are `GATEWAY_<FIELD>` (case-insensitive)."""

    # Inputs stay out of error messages: some are secrets (the default proxy, the database URL, tokens).
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", validate_default=True, hide_input_in_errors=True)

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
    # Host names both listeners answer to besides the loopback ones (comma-separated; "*": any, e.g. behind a
    # reverse proxy that checks them). A page elsewhere that rebinds its name to 127.0.0.1 gets no answer.
    allowed_hosts: str = ""

    # What every instance gets.
    instance_image: str = "aistudio-fleet-instance:latest"
    aistudio_url: str = "https://aistudio.google.com"
    # Forwarded as INSTANCE_SIGNIN_URL ({continue} = the new-chat URL); unset: the instance's default (Google).
    signin_url: str | None = None
    # Forwarded as INSTANCE_BROWSER_MODE (headed, headless, headless-shell); unset: the instance's default (headed).
    instance_browser_mode: BrowserMode | None = None
    # The browsers' egress proxy for instances without their own (scheme://[user:password@]host:port).
    default_proxy: SecretStr | None = None
    # The browsers' time zone (IANA) and locale (BCP 47) for instances without their own: pick them to match the
    # default proxy's exit country (forwarded as INSTANCE_TIMEZONE and INSTANCE_LOCALE).
    default_timezone: str = "UTC"
    default_locale: str = "en-US"
    # Where the "test proxy" action asks a proxy to connect (host:port), and how long it may take in all.
    proxy_test_target: str = "aistudio.google.com:443"
    proxy_test_timeout: float = Field(10.0, gt=0, le=120)
    instance_memory: str = "1g"
    instance_cpus: float = Field(1.0, gt=0)
    instance_pids_limit: int = Field(512, gt=0)
    instance_shm_size: str = "512m"
    # Seccomp profile of instance containers: `sandbox` (gateway/runtime/instance-seccomp.json: Docker's allowlist
    # plus the user namespaces Chromium's sandbox needs), `default` (the engine's: Chromium runs --no-sandbox), or a path.
    instance_seccomp: str = "sandbox"

    # Docker engine.
    docker_network: str | None = None
    docker_publish_host: str | None = "127.0.0.1"
    docker_connect_mode: Literal["auto", "network", "host"] = "auto"  # host: by the port published on the host
    docker_volume_prefix: str = "aistudio-fleet-data-"
    # Container name prefix and namespace label: gateways with different prefixes never touch each other's.
    # At most 27 characters: with the 36-character instance id, a container name must fit one DNS label
    # (63), or the gateway cannot resolve it on the network.
    docker_name_prefix: str = Field("aistudio-fleet-", min_length=1, max_length=27)
    # The egress fence (gateway/runtime/egress.py): instances reach the internet but no private, link-local or
    # metadata address. auto: written where the engine allows it, reported where not; on: no instance starts
    # unfenced; off: none. Openings besides AI Studio's URL and the proxies (comma-separated): address, network,
    # host:port, or the name of a container on the instance network.
    docker_egress: Literal["auto", "on", "off"] = "auto"
    docker_egress_allow: str = ""
    docker_read_only_root: bool = True  # the instance's root file system read-only (tmpfs at /tmp and its home)

    # Local engine (instance processes on this host).
    local_base_dir: Path | None = None  # default: data_dir / "local"
    local_python: str = sys.executable
    local_port_range_start: int = Field(18000, gt=0, le=65535)

    # Kubernetes engine (a pod, a claim and a token Secret per instance; gateway/runtime/kubernetes.py).
    kubernetes_namespace: str | None = None  # default: the ServiceAccount's, or the kubeconfig context's
    kubernetes_kubeconfig: Path | None = None  # default: in-cluster, then $KUBECONFIG or ~/.kube/config
    kubernetes_context: str | None = None
    # Names are <prefix><id>, <prefix>data-<id>, <prefix>token-<id>: with a 36-character id each fits a DNS label.
    kubernetes_name_prefix: str = Field("aistudio-fleet-", min_length=1, max_length=21, pattern=r"^[a-z0-9][a-z0-9-]*$")
    kubernetes_storage_size: str = "1Gi"
    kubernetes_storage_class: str | None = None
    kubernetes_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # RuntimeDefault (Chromium then runs --no-sandbox), or Localhost:<path> of instance-seccomp.json on every node.
    kubernetes_seccomp: str = "RuntimeDefault"
    kubernetes_read_only_root: bool = True
    kubernetes_api_qps: float = Field(20.0, gt=0)  # client-side pacing of API calls
    kubernetes_api_burst: int = Field(40, ge=1)
    # The start timeout counts from when the pod's container runs; before that (scheduling, the image's first pull
    # on a node) this allowance applies, in seconds; 0: no limit.
    kubernetes_pull_timeout: float = Field(1800.0, ge=0)
    # Where instance pods may run: node labels (key=value,...), tolerations (a JSON list), a PriorityClass name.
    kubernetes_node_selector: str = ""
    kubernetes_tolerations: str = ""
    kubernetes_priority_class: str | None = None

    # Reconciler.
    reconcile_interval: float = Field(5.0, gt=0)
    start_timeout: float = Field(90.0, gt=0)
    stop_timeout: float = Field(10.0, ge=0)
    start_concurrency: int = Field(default_factory=_default_start_concurrency, ge=1)
    probe_timeout: float = Field(3.0, gt=0)
    probe_concurrency: int = Field(32, ge=1)
    probe_failures_before_restart: int = Field(3, ge=1)
    restart_backoff_base: float = Field(2.0, ge=0)
    restart_backoff_max: float = Field(120.0, ge=0)
    max_restarts: int = Field(5, ge=0)
    restart_reset_after: float = Field(300.0, ge=0)  # running this long clears the crash count
    # Session health: an idle instance's login is checked on the page this often (0: never), and a session
    # whose Google auth cookies expire within session_warn_before seconds is flagged in the panel and /metrics.
    login_check_interval: float = Field(600.0, ge=0)
    session_warn_before: float = Field(3 * 86400.0, ge=0)
    remove_volume_on_delete: bool = True

    # Dispatcher: the generation API's queue, leases, retries and results.
    queue_max: int = Field(100, ge=0)  # requests waiting for an instance, per gateway process
    queue_wait_timeout: float = Field(120.0, gt=0)  # how long POST /generate may wait for an instance
    task_wait_timeout: float = Field(1800.0, gt=0)  # the same for POST /tasks (asynchronous) tasks
    queue_poll_interval: float = Field(0.5, gt=0)  # waiters re-check the pool this often without a wake-up
    generation_timeout: float = Field(180.0, gt=0)  # one attempt on one instance; above the instance's own
    lease_margin: float = Field(30.0, ge=0)  # a lease outlives its attempt by this much
    # Accounts: a quota answer blocks that model on that account until midnight Pacific; a rate limit rests the
    # model with a doubling pause. Pacing is off by default: a pause between an account's tasks, a daily cap per
    # model below Google's ("40", or "gemini-3-pro-image=20,*=60"), tasks at once per proxy exit.
    pace_pause: float = Field(0.0, ge=0, le=3600)
    pace_jitter: float = Field(0.5, ge=0, le=1)
    pace_per_exit: int = Field(0, ge=0, le=1000)
    pace_daily_cap: str = ""
    rate_limit_pause: float = Field(30.0, gt=0, le=3600)
    rate_limit_pause_max: float = Field(900.0, gt=0, le=86400)
    usage_days: int = Field(30, ge=1, le=3650)
    max_attempts: int = Field(2, ge=1)  # 2: one retry on another instance
    api_keys: SecretStr | None = None  # comma-separated keys for :8812; unset or empty: open
    task_result_ttl: float = Field(3600.0, gt=0)  # generated images are kept this long
    # Where they are kept: `database` (every gateway on it serves them), `files` (under data_dir, this gateway
    # alone), `auto`: the database when it is Postgres (several gateways may share it), else files.
    result_store: ResultStoreName = "auto"
    # `s3`: a bucket every gateway reaches (large pools). s3://bucket/optional/prefix; the endpoint of an
    # S3-compatible server (MinIO, Ceph...; unset: AWS); credentials unset: the standard AWS chain.
    result_s3_url: str = ""
    result_s3_endpoint_url: str = ""
    result_s3_region: str = ""
    result_s3_access_key_id: str = ""
    result_s3_secret_access_key: SecretStr | None = None
    result_s3_path_style: bool | None = None  # unset: path-style when an endpoint URL is set (MinIO), else virtual
    # Gateways sharing one database: each marks itself alive this often (seconds); one silent for the timeout
    # is dead, and a live one takes over its queued tasks and pending webhooks (its running tasks end abandoned).
    heartbeat_interval: float = Field(2.0, gt=0, le=300)
    heartbeat_timeout: float = Field(10.0, gt=0, le=3600)
    # Finished tasks, instance events and their result files are deleted this long after (seconds; 0: kept).
    task_retention: float = Field(30 * 86400.0, ge=0)
    retention_interval: float = Field(3600.0, gt=0)  # how often old rows are looked for
    store_sync_results: bool = True  # also keep POST /generate results for GET /tasks/{id}
    max_prompt_chars: int = Field(10_000, gt=0)
    max_reference_images: int = Field(4, ge=0)
    max_reference_bytes: int = Field(8 * 1024 * 1024, gt=0)  # per image, decoded
    max_body_bytes: int = Field(48 * 1024 * 1024, gt=0)
    # Names mapped onto today's models on purpose, for clients that cannot change theirs: "old=new,old=new"
    # (e.g. "gemini-3.1-flash-image=gemini-nano-banana-2.1"). Without one, a shut-down model gets a 422
    # model_retired naming its successor. Checked at start: a target that is unknown or itself retired is refused.
    model_aliases: str = ""

    # The OpenAI and Gemini faces on :8812.
    max_images_per_request: int = Field(4, ge=1)  # OpenAI's `n`: that many tasks, spread over idle instances
    public_url: str | None = None  # base of the image URLs handed out (behind a proxy); unset: the request's own
    image_url_ttl: float = Field(3600.0, gt=0)  # a signed image URL works this long (and while the result is kept)
    fetch_timeout: float = Field(10.0, gt=0)  # an http(s) image in a chat message must arrive within this
    fetch_private_addresses: bool = False  # true: such URLs may name private addresses too (closed networks, tests)
    sse_keepalive_interval: float = Field(10.0, gt=0)  # a streamed chat sends a comment this often while it waits
    # A conversation's earlier requests follow the new turn's text in the prompt, up to this many characters
    # (the newest kept; 0: the new turn alone). Earlier images become references regardless (gateway/api/conversation.py).
    chat_context_chars: int = Field(600, ge=0)
    # Webhooks (`callback_url`): signed with this key (HMAC-SHA256), retried with growing pauses.
    webhook_secret: SecretStr | None = None
    webhook_attempts: int = Field(5, ge=1)
    webhook_backoff: float = Field(2.0, gt=0)  # seconds before the second delivery; doubles each time
    webhook_timeout: float = Field(10.0, gt=0)

    # The canary: hours between generations, minutes between page checks; alerts POSTed (signed) here.
    # Their ranges are checked by `_valid_canary` below, which names the variable.
    canary_interval: float = 6.0
    canary_check_interval: float = 30.0
    alert_webhook: str | None = None

    # Sessions.
    legacy_session_file: Path | None = None
    max_session_bytes: int = Field(5 * 1024 * 1024, gt=0)

    # People.
    admin_token: SecretStr | None = None
    admin_session_hours: float = Field(12.0, gt=0)  # how long a panel sign-in lasts
    # Signs the panel's cookies (session, CSRF); unset: generated once and kept in data_dir/secret_key.
    secret_key: SecretStr | None = None
    # Seals instance tokens, proxy URLs and pending sessions in the database (Fernet keys, comma-separated: the
    # first seals, all open, for a rotation); or a file of them, one a line; unset: made once in
    # data_dir/encryption_key. Never kept in the database it protects.
    encryption_key: SecretStr | None = None
    encryption_key_file: Path | None = None
    language: Language = "zh"
    log_level: str = "INFO"

    @field_validator("instance_browser_mode", mode="before")
    @classmethod
    def _unset_browser_mode(cls, value: str | None) -> str | None:
        return value or None  # compose passes an unset variable as ""

    @field_validator("encryption_key")
    @classmethod
    def _valid_encryption_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # compose passes an unset variable as ""
        for position, key in enumerate(value.get_secret_value().split(","), 1):
            if not fernet_key(key.strip()):
                raise ValueError(
                    f"GATEWAY_ENCRYPTION_KEY: key {position} is not a Fernet key (32 bytes in URL-safe base64, 44 "
                    "characters; `aistudio-fleet db new-key` prints one)"
                )
        return value

    @field_validator("encryption_key_file", mode="before")
    @classmethod
    def _unset_key_file(cls, value: Any) -> Any:
        return value or None

    @field_validator("pace_daily_cap")
    @classmethod
    def _valid_caps(cls, value: str) -> str:
        try:
            parse_daily_caps(value)
        except CapError as exc:
            raise ValueError(f"GATEWAY_PACE_DAILY_CAP: {exc}") from None
        return value

    @field_validator("model_aliases")
    @classmethod
    def _valid_model_aliases(cls, value: str) -> str:
        try:
            catalogue.load().operator_aliases(value)
        except AliasError as exc:
            raise ValueError(f"GATEWAY_MODEL_ALIASES: {exc}") from None
        return value

    @field_validator("canary_interval", "canary_check_interval")
    @classmethod
    def _valid_canary(cls, value: float, info: Any) -> float:
        low, high, unit = CANARY_RANGES[info.field_name]
        if not low <= value <= high:
            raise ValueError(f"GATEWAY_{info.field_name.upper()} must be between {low:g} and {high:g} {unit}, not {value:g}")
        return value

    @field_validator("alert_webhook", mode="before")
    @classmethod
    def _valid_alert_webhook(cls, value: str | None) -> str | None:
        if value is None or not str(value).strip():
            return None  # compose passes an unset variable as ""
        url = str(value).strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("GATEWAY_ALERT_WEBHOOK must be an http(s) URL")
        return url

    @model_validator(mode="after")
    def _alerts_are_signed(self) -> Settings:
        if self.alert_webhook and not _secret(self.webhook_secret):
            raise ValueError("GATEWAY_ALERT_WEBHOOK needs GATEWAY_WEBHOOK_SECRET: alerts are signed like task webhooks")
        return self

    @model_validator(mode="after")
    def _rate_limit_pauses(self) -> Settings:
        if self.rate_limit_pause_max < self.rate_limit_pause:
            raise ValueError("GATEWAY_RATE_LIMIT_PAUSE_MAX must not be below GATEWAY_RATE_LIMIT_PAUSE")
        return self

    @field_validator("default_timezone", "default_locale")
    @classmethod
    def _valid_regional(cls, value: str, info: Any) -> str:
        # Checked at start, like the default proxy: a typo fails the gateway, not every browser later.
        try:
            normal = normalize_timezone(value) if info.field_name == "default_timezone" else normalize_locale(value)
        except RegionalError as exc:
            raise ValueError(f"GATEWAY_{info.field_name.upper()}: {exc}") from None
        return normal or ("UTC" if info.field_name == "default_timezone" else "en-US")

    @field_validator("docker_egress_allow")
    @classmethod
    def _egress_allow_entries(cls, value: str) -> str:
        for entry in (part for part in value.split(",") if part.strip()):
            try:
                parse_allow(entry)
            except ValueError as exc:  # the gateway does not start, with the entry named
                raise ValueError(f"GATEWAY_DOCKER_EGRESS_ALLOW: {exc}") from None
        return value

    @field_validator("default_proxy")
    @classmethod
    def _valid_proxy(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked at start, so a typo fails the gateway's start, not every instance's browser later.
        if value is None or not value.get_secret_value().strip():
            return None
        try:
            return SecretStr(normalize_proxy(value.get_secret_value()) or "")
        except ProxyURLError as exc:
            raise ValueError(f"GATEWAY_DEFAULT_PROXY: {exc}") from None

    @field_validator("proxy_test_target")
    @classmethod
    def _valid_test_target(cls, value: str) -> str:
        host, sep, port = value.strip().rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("GATEWAY_PROXY_TEST_TARGET must be host:port, e.g. aistudio.google.com:443")
        return value.strip()

    @field_validator("kubernetes_node_selector", "kubernetes_tolerations", "kubernetes_priority_class")
    @classmethod
    def _valid_pod_placement(cls, value: str | None, info: Any) -> str | None:
        # Checked at start: a typo stops the gateway with the reason, not every pod's creation later.
        check = {"kubernetes_node_selector": parse_node_selector, "kubernetes_tolerations": parse_tolerations,
                 "kubernetes_priority_class": check_priority_class}[info.field_name]
        if value is None or not value.strip():
            return None if info.field_name == "kubernetes_priority_class" else ""
        try:
            check(value.strip())
        except ValueError as exc:
            raise ValueError(f"GATEWAY_{info.field_name.upper()}: {exc}") from None
        return value.strip()

    @model_validator(mode="after")
    def _heartbeat_outlasts_beats(self) -> Settings:
        if self.heartbeat_timeout < 2 * self.heartbeat_interval:
            raise ValueError(
                f"GATEWAY_HEARTBEAT_TIMEOUT ({self.heartbeat_timeout:g} s) must be at least twice "
                f"GATEWAY_HEARTBEAT_INTERVAL ({self.heartbeat_interval:g} s): one late beat would make a live gateway look dead"
            )
        return self

    @model_validator(mode="after")
    def _usable_result_store(self) -> Settings:
        if self.result_store_kind == "s3":
            self.result_s3  # noqa: B018 - parsed and checked now, so a setting that cannot work stops the start
        uses = self._data_dir_uses()
        folder = self.data_dir / "results" if self.result_store_kind == "files" else self.data_dir
        if uses and (problem := _not_writable(folder)):
            raise ValueError(f"GATEWAY_DATA_DIR keeps {' and '.join(uses)}, but {problem}")
        return self

    def _data_dir_uses(self) -> list[str]:
        """What this gateway writes under GATEWAY_DATA_DIR; none: the folder need not be writable."""
        uses = []
        if self.result_store_kind == "files":
            uses.append("the results (GATEWAY_RESULT_STORE=files)")
        if not self.database_url:
            uses.append("the SQLite database (GATEWAY_DATABASE_URL unset)")
        if not _secret(self.secret_key) and (not self.database_url or self.is_sqlite):
            uses.append("the panel's signing key (GATEWAY_SECRET_KEY unset, on SQLite)")
        return uses

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{(self.data_dir / 'gateway.db').as_posix()}"
        if self.local_base_dir is None:
            self.local_base_dir = self.data_dir / "local"
        return self

    # The parts, built on each access from the current fields (a few fields each, so cheap): a copied or
    # changed Settings never hands out a stale part. The wiring (gateway/app.py) takes each part once.

    def _part(self, cls: type[Part], prefix: str = "", **given: Any) -> Part:
        """`cls` filled from the flat fields: `<prefix><name>` when there is one, else `<name>`."""
        fields = type(self).model_fields
        values = {
            field.name: getattr(self, prefix + field.name if prefix + field.name in fields else field.name)
            for field in dataclasses.fields(cls)  # type: ignore[arg-type]
            if field.name not in given
        }
        return cls(**values, **given)

    @property
    def listeners(self) -> ListenerSettings:
        return self._part(ListenerSettings)

    @property
    def sealing(self) -> SealingSettings:
        return self._part(SealingSettings)

    @property
    def instance(self) -> InstanceSettings:
        return self._part(InstanceSettings, "instance_")

    @property
    def docker(self) -> DockerSettings:
        return self._part(DockerSettings, "docker_")

    @property
    def local(self) -> LocalSettings:
        return self._part(LocalSettings, "local_")

    @property
    def kubernetes(self) -> KubernetesSettings:
        return self._part(KubernetesSettings, "kubernetes_")

    @property
    def engine(self) -> EngineSettings:
        return EngineSettings(self.runtime, self.instance, self.docker, self.local, self.kubernetes)

    @property
    def reconcile(self) -> ReconcileSettings:
        return self._part(ReconcileSettings, prepare_timeout=self.kubernetes.pull_timeout)

    @property
    def sessions(self) -> SessionSettings:
        return self._part(SessionSettings)

    @property
    def webhooks(self) -> WebhookSettings:
        return self._part(WebhookSettings, "webhook_")

    @property
    def dispatch(self) -> DispatchSettings:
        return self._part(DispatchSettings, webhooks=self.webhooks, accounts=self.accounts, result_store=self.result_store_kind,
                          result_s3=self.result_s3)

    @property
    def result_s3(self) -> S3StoreSettings | None:
        """GATEWAY_RESULT_S3_* read and checked (ValueError with the reason); None unless the store is s3."""
        if self.result_store_kind != "s3":
            return None
        return _s3_store_settings(self)

    @property
    def result_store_kind(self) -> StoreKind:
        """GATEWAY_RESULT_STORE resolved: `auto` is the database on Postgres (replicas share it), files on SQLite."""
        if self.result_store != "auto":
            return self.result_store
        return "files" if self.is_sqlite or not self.database_url else "database"

    @property
    def accounts(self) -> AccountSettings:
        return self._part(AccountSettings, "pace_", daily_caps=parse_daily_caps(self.pace_daily_cap))

    @property
    def inputs(self) -> InputSettings:
        return self._part(InputSettings, model_aliases=catalogue.load().operator_aliases(self.model_aliases))

    @property
    def faces(self) -> FaceSettings:
        return self._part(FaceSettings)

    @property
    def canary(self) -> CanarySettings:
        return self._part(CanarySettings, webhooks=self.webhooks)

    @property
    def retention(self) -> RetentionSettings:
        return self._part(RetentionSettings)

    # Flat shortcuts kept for callers that hold the whole tree (the entry point, tests).

    @property
    def default_proxy_url(self) -> str | None:
        return self.instance.default_proxy_url

    @property
    def admin_credential(self) -> str | None:
        """The admin token when one is set (an empty value counts as none)."""
        return self.listeners.admin_credential

    def admin_token_problem(self) -> str | None:
        """Why the admin token must not be used, or None: a short one is guessed too easily."""
        return self.listeners.admin_token_problem()

    @property
    def allowed_host_names(self) -> frozenset[str]:
        """GATEWAY_ALLOWED_HOSTS as lower-case names (ports and IPv6 brackets dropped); may hold "*"."""
        return self.listeners.allowed_host_names

    def admin_exposure_problem(self) -> str | None:
        """Why the admin listener must not start as configured, or None: beyond loopback it needs a credential."""
        return self.listeners.admin_exposure_problem()

    @property
    def api_key_list(self) -> list[str]:
        """The generation API's keys; empty means the API is open."""
        return self.listeners.api_key_list

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def instance_nano_cpus(self) -> int:
        return self.instance.nano_cpus


def _not_writable(folder: Path) -> str | None:
    """Why files cannot be written in `folder` (made when missing), or None."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user"
    return None


def host_name(host: str) -> str:
    """The name in a Host header or an allowlist entry: lower case, without port, brackets or a final dot."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8813
        return host[1 : host.find("]")] if "]" in host else ""
    if host.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        host = host.partition(":")[0]
    return host.rstrip(".")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name (or "", all interfaces): assume it is reachable from outside


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


def _s3_store_settings(settings: Settings) -> S3StoreSettings:
    """GATEWAY_RESULT_S3_* checked: a bucket URL that names a bucket, an endpoint that is a URL, credentials
    that come in pairs, and (for an S3-compatible server, which has no instance roles) credentials at all."""
    url = settings.result_s3_url.strip()
    if not url:
        raise ValueError("GATEWAY_RESULT_STORE=s3 needs GATEWAY_RESULT_S3_URL, e.g. s3://my-bucket/fleet-results")
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(f"GATEWAY_RESULT_S3_URL must start with s3:// (s3://bucket/prefix), not {parts.scheme or 'no'} scheme")
    bucket = parts.netloc
    if not bucket:
        raise ValueError("GATEWAY_RESULT_S3_URL names no bucket: s3://bucket/prefix")
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"GATEWAY_RESULT_S3_URL: {bucket!r} is not a bucket name (3-63 of a-z 0-9 . -)")
    if parts.query or parts.fragment:
        raise ValueError("GATEWAY_RESULT_S3_URL takes no query or fragment: s3://bucket/prefix")
    prefix = parts.path.strip("/")
    endpoint = settings.result_s3_endpoint_url.strip() or None
    if endpoint is not None:
        scheme, host = urlsplit(endpoint).scheme, urlsplit(endpoint).hostname
        if scheme not in ("http", "https") or not host:
            raise ValueError(f"GATEWAY_RESULT_S3_ENDPOINT_URL must be an http(s) URL, e.g. http://minio:9000, not {endpoint!r}")
    key_id, secret = settings.result_s3_access_key_id.strip(), _secret(settings.result_s3_secret_access_key).strip()
    if bool(key_id) != bool(secret):
        raise ValueError("GATEWAY_RESULT_S3_ACCESS_KEY_ID and GATEWAY_RESULT_S3_SECRET_ACCESS_KEY go together: set both or neither")
    region = settings.result_s3_region.strip() or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    if endpoint is None and region is None and not _aws_config_has_region():
        raise ValueError("GATEWAY_RESULT_STORE=s3 on AWS needs a region: GATEWAY_RESULT_S3_REGION or AWS_REGION "
                         "(or GATEWAY_RESULT_S3_ENDPOINT_URL for an S3-compatible server)")
    if endpoint is not None and not key_id and not _aws_credentials_found():
        raise ValueError(f"GATEWAY_RESULT_S3_ENDPOINT_URL={endpoint} needs credentials: GATEWAY_RESULT_S3_ACCESS_KEY_ID and "
                         "GATEWAY_RESULT_S3_SECRET_ACCESS_KEY, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a shared "
                         "credentials file (AWS_SHARED_CREDENTIALS_FILE)")
    path_style = settings.result_s3_path_style if settings.result_s3_path_style is not None else endpoint is not None
    return S3StoreSettings(bucket, f"{prefix}/" if prefix else "", endpoint, region, key_id or None, secret or None, path_style)


_LOCAL_CREDENTIALS = ("env", "shared-credentials-file", "config-file", "boto-config")


def _aws_credentials_found() -> bool:
    """Credentials from the standard chain short of an instance role (an S3-compatible server has none)."""
    import botocore.session  # only with GATEWAY_RESULT_STORE=s3
    from botocore.exceptions import BotoCoreError

    resolver = botocore.session.Session().get_component("credential_provider")
    for name in [p.METHOD for p in resolver.providers if p.METHOD not in _LOCAL_CREDENTIALS]:
        resolver.remove(name)  # roles and sign-ins ask the network: not at start, and not what a MinIO server takes
    try:
        return resolver.load_credentials() is not None
    except (BotoCoreError, OSError, ValueError):  # a damaged credentials file: as if none
        return False


def _aws_config_has_region() -> bool:
    import botocore.session  # only with GATEWAY_RESULT_STORE=s3
    from botocore.exceptions import BotoCoreError

    try:
        return bool(botocore.session.Session().get_config_variable("region"))
    except (BotoCoreError, OSError, ValueError):  # a damaged config file: as if none
        return False
