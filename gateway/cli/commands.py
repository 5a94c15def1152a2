"""`aistudio-fleet`: the operator's command line over the management API.

Tables for people, `--json` for scripts; exit codes in gateway/cli/client.py (0 ok, 1 refused, 2 usage,
3 unreachable, 4 partial migration). Instances are named by name, id, or a unique id prefix.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway import __version__
from gateway.cli.client import (
    DEFAULT_URL,
    EXIT_OK,
    SHORT_ID,
    CliError,
    FleetClient,
    UsageProblem,
    dumps,
    language,
    resolve_token,
)
from gateway.cli.tables import table, when

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Options:
    url: str
    token_file: Path | None
    timeout: float
    lang: str = field(default_factory=language)
    _client: FleetClient | None = None

    def client(self) -> FleetClient:
        if self._client is None:
            self._client = FleetClient(self.url, resolve_token(self.token_file), timeout=self.timeout, lang=self.lang)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table.")(function)


def handled(function: F) -> F:
    """A CliError ends the command with its exit code and message (as JSON too, under --json)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except CliError as exc:
            if kwargs.get("as_json"):
                body = {"success": False, "error": exc.code or type(exc).__name__, "message": str(exc)}
                if getattr(exc, "status", None) is not None:
                    body["status"] = exc.status  # type: ignore[attr-defined]
                click.echo(dumps(body))
            else:
                click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--url", envvar="AISTUDIO_FLEET_URL", default=DEFAULT_URL, show_default=True,
              help="The management API (the admin listener). Env: AISTUDIO_FLEET_URL.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), envvar="AISTUDIO_FLEET_TOKEN_FILE",
              help="A file holding the admin token. Else AISTUDIO_FLEET_TOKEN, else GATEWAY_ADMIN_TOKEN.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for each answer.")
@click.version_option(__version__, prog_name="aistudio-fleet")
@click.pass_context
def main(ctx: click.Context, url: str, token_file: Path | None, timeout: float) -> None:
    """Run an AI Studio Fleet from the command line: instances, logs, sessions, tasks, the database schema,
    and the move from the old multi-instance system (`migrate`).

    \b
    Exit codes: 0 done; 1 the gateway refused (its message is printed); 2 usage (bad arguments or input
    file); 3 the gateway (or, for `db upgrade`, the database) cannot be reached; 4 a migration that left
    something behind (see its report).
    """
    options = Options(url, token_file, timeout)
    ctx.obj = options
    ctx.call_on_close(options.close)


# Instances ---------------------------------------------------------------------------------------------


@main.group()
def instances() -> None:
    """List, create, start, stop and remove instances."""


@instances.command("ls")
@json_option
@click.pass_obj
@handled
def instances_ls(options: Options, as_json: bool) -> None:
    """All instances, oldest first."""
    body = options.client().call("GET", "/api/instances")
    if as_json:
        click.echo(dumps(body))
        return
    rows = [
        (
            v["name"], v["instance_id"][:SHORT_ID], v["status"], v.get("login_state", "-"),
            "busy" if v["is_busy"] else ("idle" if v.get("available") else "-"),
            f"{v.get('tasks_done', 0)}/{v.get('tasks_failed', 0)}", when(v.get("last_used")),
            _short(v.get("error_message") or v.get("page_error") or "", 60) or "-",
        )
        for v in body["instances"]
    ]
    click.echo(table(("NAME", "ID", "STATUS", "LOGIN", "BUSY", "DONE/FAILED", "LAST USED", "ERROR"), rows))
    click.echo(f"\n{body['total_count']} instance(s), {body['concurrency_count']} running")


@instances.command("create")
@click.argument("name")
@click.option("--proxy", help="Its own egress proxy, e.g. socks5://user:pass@10.0.0.2:1080.")
@click.option("--start", "start_now", is_flag=True, help="Start it right away.")
@json_option
@click.pass_obj
@handled
def instances_create(options: Options, name: str, proxy: str | None, start_now: bool, as_json: bool) -> None:
    """Create a stopped instance NAME."""
    client = options.client()
    body = {"name": name, **({"proxy": proxy} if proxy else {})}
    created = client.call("POST", "/api/instances", json=body)
    answers = [created]
    if start_now:
        answers.append(client.call("POST", f"/api/instances/{created['instance_id']}/start"))
    if as_json:
        click.echo(dumps(answers[-1] if not start_now else {**created, "started": answers[-1]}))
        return
    for answer in answers:
        click.echo(answer["message"])
    click.echo(created["instance_id"])


def _action(verb: str, method: str, suffix: str) -> Callable[..., None]:
    @click.argument("names", nargs=-1, required=True)
    @json_option
    @click.pass_obj
    @handled
    def command(options: Options, names: tuple[str, ...], as_json: bool) -> None:
        client = options.client()
        answers = []
        for name in names:
            view = client.resolve(name)
            answer = client.call(method, f"/api/instances/{view['instance_id']}{suffix}")
            answers.append(answer)
            if not as_json:
                click.echo(answer["message"])
        if as_json:
            click.echo(dumps(answers if len(answers) > 1 else answers[0]))

    command.__doc__ = f"{verb} the instances NAMES (names or ids)."
    return command


@instances.command("set")
@click.argument("name")
@click.option("--pace", metavar="SECONDS|default",
              help="Seconds between this account's tasks (0-3600); 'default': the fleet's (GATEWAY_PACE_PAUSE).")
@click.option("--daily-cap", metavar="N|default",
              help="Images per model a day on this account (1-100000); 'default': the fleet's (GATEWAY_PACE_DAILY_CAP).")
@json_option
@click.pass_obj
@handled
def instances_set(options: Options, name: str, pace: str | None, daily_cap: str | None, as_json: bool) -> None:
    """Change NAME's pacing, from its next task (the gateway checks the ranges; nothing changes on a refusal)."""
    body: dict[str, Any] = {}
    if pace is not None:
        body["pace_seconds"] = _setting_value(pace, "--pace", float)
    if daily_cap is not None:
        body["daily_cap"] = _setting_value(daily_cap, "--daily-cap", int)
    if not body:
        raise UsageProblem("give --pace and/or --daily-cap")
    client = options.client()
    view = client.resolve(name)
    answer = client.call("PATCH", f"/api/instances/{view['instance_id']}", json=body)
    click.echo(dumps(answer) if as_json else answer["message"])


def _setting_value(text: str, option: str, kind: type[float | int]) -> float | int | None:
    """A number for the gateway to check, or None for 'default' (back to the fleet's setting)."""
    if text.strip().lower() in ("default", "fleet", "none", ""):
        return None
    try:
        return kind(text)
    except ValueError:
        raise UsageProblem(f"{option}: {text!r} is not a {'whole ' if kind is int else ''}number, nor 'default'") from None


instances.command("start")(_action("Start", "POST", "/start"))
instances.command("stop")(_action("Stop", "POST", "/stop"))
instances.command("rm")(_action("Delete (stopped)", "DELETE", ""))


# Accounts ----------------------------------------------------------------------------------------------


@main.group()
def accounts() -> None:
    """The Google accounts' daily allowances per model (they reset at midnight Pacific time)."""


@accounts.command("usage")
@click.option("--model", help="Only this model (an id or an alias).")
@json_option
@click.pass_obj
@handled
def accounts_usage(options: Options, model: str | None, as_json: bool) -> None:
    """Per account and model: made today, learned capacity, cap, left, blocked until (UTC) and why; then the
    pool's totals per model. Capacity '?' and left '?': the account never ran out, so nobody knows yet."""
    body = options.client().call("GET", "/api/accounts/usage", params={"model": model} if model else None)
    if as_json:
        click.echo(dumps(body))
        return
    rows = [
        (account["name"], *_usage_cells(cell))
        for account in body["accounts"] for cell in account["models"]
    ]
    headers = ("ACCOUNT", "MODEL", "MADE TODAY", "CAPACITY", "CAP", "LEFT", "BLOCKED UNTIL", "WHY")
    click.echo(table(headers, rows))
    pool = [(p["model"], p["made_today"], p["remaining"], p["unknown_capacity"], p["blocked"], p["accounts"]) for p in body["pool"]]
    click.echo("")
    click.echo(table(("MODEL", "MADE TODAY", "POOL LEFT", "UNKNOWN CAPACITY", "BLOCKED", "ACCOUNTS RUNNING"), pool))
    click.echo(f"\nToday (Pacific): {body['day']}. Allowances reset at midnight Pacific time; next: {when(body['next_reset'])} UTC.")


def _usage_cells(cell: dict[str, Any]) -> tuple[object, ...]:
    unknown = "?"
    until = "-"
    if cell["blocked"]:
        until = when(cell.get("blocked_until")) if cell.get("blocked_until") else "new session"
    why = "-"
    if cell["blocked"]:
        reason = _short(cell.get("block_reason") or "", 50)
        why = f"{cell.get('block_kind')}: {reason}" if reason else str(cell.get("block_kind"))
    return (
        cell["model"], cell["made_today"],
        unknown if cell["learned_capacity"] is None else cell["learned_capacity"],
        cell["cap"], unknown if cell["remaining"] is None else cell["remaining"], until, why,
    )


# Logs and sessions -------------------------------------------------------------------------------------


@main.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("--tail", type=click.IntRange(0, 100_000), default=200, show_default=True, help="Lines from the end.")
@click.pass_obj
@handled
def logs(options: Options, name: str, follow: bool, tail: int) -> None:
    """An instance's container logs."""
    client = options.client()
    view = client.resolve(name)
    if not follow:
        for line in client.call("GET", f"/api/instances/{view['instance_id']}/logs", params={"tail": tail})["lines"]:
            click.echo(line)
        return
    try:
        for event, data in client.follow_logs(view["instance_id"], tail=tail):
            if event == "log":
                click.echo(data)
            elif event == "error":
                raise CliError(data)
            elif event == "end":
                return
    except KeyboardInterrupt:
        return


@main.group()
def session() -> None:
    """Import or export an instance's Google login (Playwright storage state)."""


@session.command("import")
@click.argument("name")
@click.argument("file", type=click.File("rb"))
@json_option
@click.pass_obj
@handled
def session_import(options: Options, name: str, file: Any, as_json: bool) -> None:
    """Import FILE (storage state, cookie list or extension export; - for stdin) into NAME. A running instance
    takes it now; a stopped one gets it when it is next ready."""
    client = options.client()
    view = client.resolve(name)
    body = file.read()
    answer = client.call("PUT", f"/api/instances/{view['instance_id']}/session", content=body,
                         headers={"Content-Type": "application/json"})
    click.echo(dumps(answer) if as_json else answer["message"])


@session.command("export")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file (mode 600).")
@click.pass_obj
@handled
def session_export(options: Options, name: str, output: Path | None) -> None:
    """NAME's current storage state (it signs in as that account: keep it private)."""
    client = options.client()
    view = client.resolve(name)
    body = client.raw("GET", f"/api/instances/{view['instance_id']}/session")
    if output is None:
        click.echo(body.decode())
        return
    try:
        write_private(output, body)
    except OSError as exc:
        raise UsageProblem(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"{output}: {len(body)} bytes", err=True)


def write_private(path: Path, body: bytes) -> None:
    """`body` at `path`, mode 600 whatever was there: written to a new file beside it, then renamed over it, so a
    symlink at `path` is replaced, never followed, and an existing file's mode is not kept."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 600
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# Tasks -------------------------------------------------------------------------------------------------


@main.group()
def tasks() -> None:
    """The task history."""


@tasks.command("ls")
@click.option("--outcome", type=click.Choice(["queued", "running", "succeeded", "failed"]), help="Only these.")
@click.option("--instance", "instance_name", help="Only tasks of this instance (name or id).")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@click.pass_obj
@handled
def tasks_ls(options: Options, outcome: str | None, instance_name: str | None, limit: int, as_json: bool) -> None:
    """Recent tasks, newest first."""
    client = options.client()
    params: dict[str, Any] = {"limit": limit, **({"outcome": outcome} if outcome else {})}
    if instance_name:
        params["instance_id"] = client.resolve(instance_name)["instance_id"]
    body = client.call("GET", "/api/tasks", params=params)
    if as_json:
        click.echo(dumps(body))
        return
    rows = [
        (
            t["task_id"][:SHORT_ID], t["status"], t.get("instance_name") or "-", when(t["created_at"]),
            f"{t['total_ms'] / 1000:.1f}s" if t.get("total_ms") is not None else "-", t.get("image_count", 0),
            t.get("error_code") or "-", _short(t.get("prompt", ""), 40),
        )
        for t in body["tasks"]
    ]
    click.echo(table(("TASK", "STATUS", "INSTANCE", "CREATED", "TOTAL", "IMAGES", "ERROR", "PROMPT"), rows))


# Database ----------------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """The gateway's database (GATEWAY_DATABASE_URL, else the SQLite file under GATEWAY_DATA_DIR)."""


@db.command("upgrade")
@json_option
@handled
def db_upgrade(as_json: bool) -> None:
    """Upgrade the schema to this version's newest revision (what the gateway does at start unless
    GATEWAY_MIGRATE_ON_START=false)."""
    from gateway.cli.database import upgrade  # the database packages only for this command

    revision, url = upgrade()
    if as_json:
        click.echo(dumps({"success": True, "revision": revision, "database": url}))
    else:
        click.echo(f"{url}: schema at revision {revision}")


@db.command("reseal")
@json_option
@handled
def db_reseal(as_json: bool) -> None:
    """Seal every secret in the database again with the first key of GATEWAY_ENCRYPTION_KEY (or of
    GATEWAY_ENCRYPTION_KEY_FILE): the second step of a key rotation, after every gateway has the new key first
    and the old one after it. Values from before sealing are sealed too. Afterwards the old key can go."""
    from gateway.cli.database import reseal

    written, url = reseal()
    if as_json:
        click.echo(dumps({"success": True, "resealed": written, "database": url}))
    else:
        click.echo(f"{url}: {written} secret(s) sealed with the first key")


@db.command("new-key")
def db_new_key() -> None:
    """Print a new encryption key (for GATEWAY_ENCRYPTION_KEY or a line of GATEWAY_ENCRYPTION_KEY_FILE)."""
    from gateway.db.sealing import new_key

    click.echo(new_key())


# Migration ---------------------------------------------------------------------------------------------


@main.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--start", "start_after", is_flag=True, help="Start each instance it creates.")
@click.option("--dry-run", is_flag=True, help="Say what it would do; change nothing.")
@json_option
@click.pass_obj
@handled
def migrate(options: Options, source: Path, start_after: bool, dry_run: bool, as_json: bool) -> None:
    """Move an old deployment in: SOURCE is the old system's data/ directory (or a zip of it).

    One new instance per entry of browser_instances.json, with the same name (a taken or invalid name gets a
    suffix), its cookies/browser_<id>_session.json as its login, and ai_studio_session.json (if there) as an
    instance named `legacy`. Each new instance remembers its old id: running it again changes nothing, and a
    run that was interrupted finishes the rest. Exit code 4 when something could not move in.
    """
    from gateway.cli.migrate import run_migration

    sys.exit(run_migration(options.client(), source, start=start_after, dry_run=dry_run, as_json=as_json, lang=options.lang))


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run() -> None:
    """The console script's entry point."""
    main(prog_name="aistudio-fleet")


if __name__ == "__main__":
    run()
    sys.exit(EXIT_OK)
