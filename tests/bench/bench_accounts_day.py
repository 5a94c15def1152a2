"""The account ledger over simulated days (a script, not a test): images served against the accounts' daily
allowances, quota answers spent, and how the work spreads, beside the behaviour before the ledger, in one run.

    python -m tests.bench.bench_accounts_day [--days 2] [--scale 1] [--demand 1.1]

5 accounts, 2 models, a different daily allowance per account and model that Google does not publish and that
resets at midnight Pacific. A steady stream of requests, a bit above the sum of the allowances (`--demand`),
split between the models in proportion to their allowances, one at a time at even intervals over each Pacific
day; the clock is a manual one that the script moves to each request's moment. Each policy sees the same
allowances, the same stream and the same clock:

- the ledger (today's code): the real Fleet, Dispatcher and Ledger, on SQLite in a temporary folder and, when
  AISTUDIO_TEST_POSTGRES_URL is set, on a fresh Postgres database; requests go to the old API's POST /generate
  over HTTP. The pages are the fake runtime's instances, made to keep the allowances (`AllowanceFakeRuntime`);
- before the ledger (commit 83f3c32^, gone from the code, so simulated here in a few pure lines): a quota answer
  rested the whole account for 5 hours (every model), a rate limit for 300 s, a task took at most 2 attempts,
  and the lease took the least recently used account not resting. The fake pages never rate-limit, so only
  the quota rule is at work in either policy.

Printed per policy and day: images served against the sum of the allowances (target >= 98 %); attempts that met
a page answering "quota", per account and model (target: at most 1 a day), their max and total; how requests
ended (served, failed after quota answers, refused with 429 model_exhausted, other refusals); how many accounts
still had images left at 18:00 Pacific and when the accounts ran dry; the wall time. For the ledger also: its
rows against the pages' own counts, and whether a 429's Retry-After pointed at the next midnight Pacific.
`--scale` multiplies the allowances and the demand alike (the run stays well under a minute at 1 on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from a checkout

import httpx
from sqlalchemy import select

from fleet_contract.codes import ErrorCode
from gateway.accounts.calendar import PACIFIC, day_start, next_reset, pacific_day
from gateway.db.models import AccountUsage
from gateway.db.types import utcnow
from gateway.runtime.fake import FAKE_DOMAIN, FakeOutcome, FakeRuntime
from tests.bench.bench_control_plane import postgres_database
from tests.gateway.pool import ManualClock, Pool, open_pool

MODEL_A = "gemini-2.5-flash-image"
MODEL_B = "gemini-3-pro-image"
ALLOWANCES = {MODEL_A: [40, 25, 60, 10, 100], MODEL_B: [15, 30, 5, 20, 8]}  # per account, per Pacific day
SAMPLE_HOUR = 18  # the spread: how many accounts still have images left at this hour, Pacific
TARGET_SERVED = 0.98
TARGET_QUOTA_ANSWERS = 1  # per account and model per day

SERVED = "served"
QUOTA = str(ErrorCode.QUOTA_EXHAUSTED)
EXHAUSTED_429 = "429 model_exhausted"

Allowances = dict[str, list[int]]


# ---- the pages: what Google would answer -----------------------------------------------------------------


class Pages:
    """The accounts' allowances as Google keeps them, per account, model and Pacific day: the truth both
    policies are measured against (what each account made, the quota answers it gave, when it ran dry)."""

    def __init__(self, allowances: Allowances) -> None:
        self.allowances = allowances
        self.made: Counter[tuple[int, str, date]] = Counter()
        self.quota_answers: Counter[tuple[int, str, date]] = Counter()
        self.dry_at: dict[tuple[int, str, date], datetime] = {}  # when the account's last image of the day came

    @property
    def accounts(self) -> int:
        return len(next(iter(self.allowances.values())))

    def ask(self, account: int, model: str, now: datetime) -> str | None:
        """One generation: None when it made an image, else the page's error code (quota only: no rate limits)."""
        key = (account, model, pacific_day(now))
        if self.made[key] >= self.allowances[model][account]:
            self.quota_answers[key] += 1
            return QUOTA
        self.made[key] += 1
        if self.made[key] == self.allowances[model][account]:
            self.dry_at[key] = now
        return None

    def accounts_with_images_left(self, model: str, now: datetime) -> int:
        day = pacific_day(now)
        return sum(self.made[(a, model, day)] < self.allowances[model][a] for a in range(self.accounts))


class AllowanceFakeRuntime(FakeRuntime):
    """The fake runtime's instances as pages that keep `Pages`' allowances: instance `i<n>` is account n, and a
    generation whose account has spent its model today answers quota_exhausted (retry-safe), as AI Studio does."""

    def __init__(self, pages: Pages, clock: ManualClock) -> None:
        super().__init__()
        self.pages = pages
        self.clock = clock

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/generate":
            self._script_quota_when_spent(request)
        return await super()._handle(request)

    def _script_quota_when_spent(self, request: httpx.Request) -> None:
        container = self.containers.get(request.url.host.removesuffix(f".{FAKE_DOMAIN}"))
        if container is None or container.phase != "running" or container.busy:
            return  # the fake refuses it (gone, busy) before any page would be asked
        model = json.loads(request.content or b"{}").get("model")
        code = self.pages.ask(int(container.name.removeprefix("i")), model, self.clock())
        if code is not None:
            container.script.insert(0, FakeOutcome.error(code, retry_safe=True))


# ---- the stream of requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    at: datetime
    model: str


def scaled(allowances: Allowances, scale: float) -> Allowances:
    return {model: [max(1, round(a * scale)) for a in per_account] for model, per_account in allowances.items()}


def daily_demand(allowances: Allowances, demand: float) -> dict[str, int]:
    return {model: math.ceil(demand * sum(per_account)) for model, per_account in allowances.items()}


def day_stream(day: date, per_model: dict[str, int]) -> list[Request]:
    """One Pacific day's requests at even intervals, the models interleaved in proportion (a DST day has its
    own length: the day runs from one midnight Pacific to the next)."""
    order = sorted(((n + 0.5) / count, model) for model, count in per_model.items() for n in range(count))
    begin, end = day_start(day), day_start(day + timedelta(days=1))
    step = (end - begin) / len(order)
    return [Request(begin + step * (k + 0.5), model) for k, (_, model) in enumerate(order)]


def stream(first: date, days: int, per_model: dict[str, int]) -> list[Request]:
    return [r for d in range(days) for r in day_stream(first + timedelta(days=d), per_model)]


# ---- how a policy did ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    kind: str  # SERVED, "failed <code>", EXHAUSTED_429 or another refusal ("503 <key>")
    retry_at: datetime | None = None  # a 429's Retry-After, as a moment


@dataclass
class Run:
    """One policy's pass over the stream: its outcomes per day, the pages' counts, the 18:00 samples."""

    label: str
    pages: Pages
    outcomes: dict[date, Counter[str]] = field(default_factory=dict)
    left_at_sample: dict[date, dict[str, int]] = field(default_factory=dict)
    retry_after_ok: dict[date, bool] = field(default_factory=dict)  # every 429 pointed at the next midnight
    seconds: float = 0.0
    setup_seconds: float = 0.0
    ledger_check: str | None = None

    def before(self, request: Request) -> None:
        """Samples the spread once per day, at the first request from SAMPLE_HOUR on."""
        day = pacific_day(request.at)
        if day not in self.left_at_sample and request.at.astimezone(PACIFIC).hour >= SAMPLE_HOUR:
            models = self.pages.allowances
            self.left_at_sample[day] = {m: self.pages.accounts_with_images_left(m, request.at) for m in models}

    def record(self, request: Request, outcome: Outcome) -> None:
        day = pacific_day(request.at)
        self.outcomes.setdefault(day, Counter())[outcome.kind] += 1
        if outcome.kind == EXHAUSTED_429:
            pointed = outcome.retry_at is not None and abs(outcome.retry_at - next_reset(request.at)) <= timedelta(seconds=1)
            self.retry_after_ok[day] = self.retry_after_ok.get(day, True) and pointed


async def drive(run: Run, requests: list[Request], answer: Callable[[Request], Awaitable[Outcome]]) -> None:
    began = time.perf_counter()
    for request in requests:
        run.before(request)
        run.record(request, await answer(request))
    run.seconds = time.perf_counter() - began


# ---- the ledger: the real gateway on the fake pages --------------------------------------------------------


def outcome_of(response: httpx.Response, now: datetime) -> Outcome:
    """The old API's answer: 200 with success true or false, or an error with its key."""
    body = response.json()
    if response.status_code == 200:
        return Outcome(SERVED) if body.get("success") else Outcome(f"failed {body.get('error_code')}")
    key = body.get("error", "?")
    if response.status_code == 429 and key == "model_exhausted":
        return Outcome(EXHAUSTED_429, now + timedelta(seconds=int(response.headers.get("retry-after", "0"))))
    return Outcome(f"{response.status_code} {key}")


async def run_ledger(label: str, database_url: str, data_dir: Path, allowances: Allowances, requests: list[Request]) -> Run:
    clock = ManualClock(requests[0].at)
    pages = Pages(allowances)
    fake = AllowanceFakeRuntime(pages, clock)
    run = Run(label, pages)
    began = time.perf_counter()
    # A slower reconcile loop than the tests': the instances only need to stay running and signed in.
    async with open_pool(database_url, data_dir, fake, pages.accounts, clock=clock, reconcile_interval=0.5) as pool:
        run.setup_seconds = time.perf_counter() - began

        async def answer(request: Request) -> Outcome:
            clock.now = request.at
            response = await pool.http.post("/generate", json={"prompt": "a cat", "model": request.model})
            # The release is written just after the answer: it must land on this request's moment, not the next.
            await pool.fleet.dispatcher.settled()
            return outcome_of(response, request.at)

        await drive(run, requests, answer)
        run.ledger_check = await compare_ledger(pool, pages)
    return run


async def compare_ledger(pool: Pool, pages: Pages) -> str:
    """The ledger's rows (made, quota answers, capacity learned) against the pages' own counts."""
    account_of = {uuid.UUID(iid): int(name.removeprefix("i")) for name, iid in pool.by_name.items()}
    async with pool.fleet.sessions() as session:
        rows = (await session.scalars(select(AccountUsage))).all()
    ledger = {(account_of[r.instance_id], r.model, r.day): (r.made, r.quota_answers, r.made_at_quota) for r in rows}
    keys = set(ledger) | set(pages.made) | set(pages.quota_answers)
    expected = {
        k: (pages.made[k], pages.quota_answers[k], pages.made[k] if pages.quota_answers[k] else None) for k in keys
    }
    wrong = sorted(k for k in keys if ledger.get(k) != expected[k])
    if not wrong:
        return f"its {len(ledger)} rows agree with the pages (made, quota answers, capacity learned)"
    shown = "; ".join(f"{k[0]}/{k[1]}/{k[2]}: ledger {ledger.get(k)}, pages {expected[k]}" for k in wrong[:4])
    return f"{len(wrong)} of {len(keys)} rows DIFFER from the pages: {shown}"


# ---- before the ledger: the old policy, simulated ---------------------------------------------------------


@dataclass
class OldAccount:
    index: int
    rests_until: datetime | None = None  # the whole account rested: every model
    last_used: datetime | None = None


class OldGateway:
    """The dispatcher before the ledger, as a pure simulation: a quota answer rested the account 5 hours for every
    model, a rate limit 300 s; the lease took the least recently used account not resting (by id on a tie); a
    quota answer spent one of the task's 2 attempts; nothing free at all was a 503 all_instances_cooling_down."""

    REST: ClassVar[dict[str, timedelta]] = {QUOTA: timedelta(hours=5), str(ErrorCode.RATE_LIMITED): timedelta(seconds=300)}
    MAX_ATTEMPTS = 2

    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.accounts = [OldAccount(n) for n in range(pages.accounts)]

    async def answer(self, request: Request) -> Outcome:
        tried: set[int] = set()
        while True:
            account = self._lease(request.at, tried)
            if account is None:
                return Outcome(f"failed {QUOTA}") if tried else Outcome("503 all_instances_cooling_down")
            account.last_used = request.at
            code = self.pages.ask(account.index, request.model, request.at)
            if code is None:
                return Outcome(SERVED)
            account.rests_until = request.at + self.REST[code]
            tried.add(account.index)
            if len(tried) >= self.MAX_ATTEMPTS:
                return Outcome(f"failed {code}")

    def _lease(self, now: datetime, tried: set[int]) -> OldAccount | None:
        free = [a for a in self.accounts if a.index not in tried and (a.rests_until is None or a.rests_until <= now)]
        return min(free, key=lambda a: (a.last_used is not None, a.last_used or now, a.index), default=None)


async def run_old(allowances: Allowances, requests: list[Request]) -> Run:
    pages = Pages(allowances)
    run = Run("before the ledger (simulated)", pages)
    await drive(run, requests, OldGateway(pages).answer)
    return run


# ---- the report -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayFigures:
    """One policy's figures for one Pacific day, from the pages' counts and the answers the requests got."""

    made: int
    allowance: int
    quota_max: int
    quota_total: int
    outcomes: Counter[str]
    left_at_sample: dict[str, int]
    dry: dict[str, list[datetime]]  # per model: when each account that ran dry made its last image, in order

    @classmethod
    def of(cls, run: Run, day: date) -> DayFigures:
        pages = run.pages
        answers = [n for (_, _, d), n in pages.quota_answers.items() if d == day]
        dry = {m: sorted(t for (_, model, d), t in pages.dry_at.items() if model == m and d == day) for m in pages.allowances}
        return cls(
            made=sum(n for (_, _, d), n in pages.made.items() if d == day),
            allowance=sum(sum(per_account) for per_account in pages.allowances.values()),
            quota_max=max(answers, default=0),
            quota_total=sum(answers),
            outcomes=run.outcomes.get(day, Counter()),
            left_at_sample=run.left_at_sample.get(day, {}),
            dry=dry,
        )

    @property
    def share(self) -> float:
        return self.made / self.allowance

    @property
    def failed(self) -> int:
        return sum(n for kind, n in self.outcomes.items() if kind.startswith("failed"))

    @property
    def other_refusals(self) -> Counter[str]:
        return Counter({k: n for k, n in self.outcomes.items() if k not in (SERVED, EXHAUSTED_429) and not k.startswith("failed")})

    @property
    def served_ok(self) -> bool:
        return self.share >= TARGET_SERVED

    @property
    def quota_ok(self) -> bool:
        return self.quota_max <= TARGET_QUOTA_ANSWERS


def hhmm(moment: datetime | None) -> str:
    return moment.astimezone(PACIFIC).strftime("%H:%M") if moment else "--:--"


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 0.1 else f"{value * 1000:.1f} ms"


def report(run: Run, days: list[date], letters: dict[str, str]) -> bool:
    """The policy's figures day by day; whether it met both targets every day."""
    setup = f" (+ {seconds(run.setup_seconds)} to start the pool)" if run.setup_seconds else ""
    print(f"\n[{run.label}] wall time {seconds(run.seconds)}{setup}")
    ok = True
    for n, day in enumerate(days, 1):
        f = DayFigures.of(run, day)
        ok &= f.served_ok and f.quota_ok
        print(f"  day {n} ({day.isoformat()}): served {f.made} of {f.allowance} ({f.share:.1%}, target >= {TARGET_SERVED:.0%}: "
              f"{met(f.served_ok)}); quota answers per account and model: max {f.quota_max}, total {f.quota_total} "
              f"(target max <= {TARGET_QUOTA_ANSWERS}: {met(f.quota_ok)})")
        others = ", ".join(f"{n} x {k}" for k, n in sorted(f.other_refusals.items())) or "none"
        line = (f"{sum(f.outcomes.values())} requests: {f.outcomes[SERVED]} served, {f.failed} failed after quota answers, "
                f"{f.outcomes[EXHAUSTED_429]} refused 429 model_exhausted, other refusals: {others}")
        if day in run.retry_after_ok:
            line += f"; each 429's Retry-After ends at midnight Pacific: {'yes' if run.retry_after_ok[day] else 'NO'}"
        print(f"    {line}")
        spread = "; ".join(
            f"{letters[m]}: {f.left_at_sample.get(m, '?')}/{run.pages.accounts} accounts with images left at {SAMPLE_HOUR}:00, "
            f"{len(times)} ran dry ({hhmm(times[0] if times else None)} to {hhmm(times[-1] if times else None)})"
            for m, times in f.dry.items()
        )
        print(f"    {spread}")
    if run.ledger_check:
        print(f"  ledger: {run.ledger_check}")
    return ok


def summary(runs: list[Run], days: list[date]) -> None:
    """One row per policy and day, side by side."""
    print(f"\n{'policy':<31}{'day':>4}{'served/allowance':>19}{'quota max/total':>17}{'failed':>8}{'429 exhausted':>15}"
          f"{'other refused':>15}{f'left {SAMPLE_HOUR}:00 A/B':>17}{'wall':>11}")
    for run in runs:
        for n, day in enumerate(days, 1):
            f = DayFigures.of(run, day)
            left = "/".join(str(v) for v in f.left_at_sample.values())
            wall = seconds(run.seconds) if n == 1 else ""
            print(f"{run.label:<31}{n:>4}{f'{f.made}/{f.allowance} {f.share:.1%}':>19}{f'{f.quota_max}/{f.quota_total}':>17}"
                  f"{f.failed:>8}{f.outcomes[EXHAUSTED_429]:>15}{sum(f.other_refusals.values()):>15}{left:>17}{wall:>11}")


# ---- main ---------------------------------------------------------------------------------------------


async def run_ledger_on_postgres(admin_url: str, data_dir: Path, allowances: Allowances, requests: list[Request]) -> Run:
    """A fresh database of its own, dropped afterwards."""
    from sqlalchemy.engine import make_url

    name = f"bench_{uuid.uuid4().hex[:12]}"
    await postgres_database(admin_url, f'CREATE DATABASE "{name}"')
    try:
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        return await run_ledger("the ledger (Postgres)", url, data_dir, allowances, requests)
    finally:
        await postgres_database(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=2, help="simulated Pacific days (the 2nd shows the reset and the learned capacity)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the allowances and the demand")
    parser.add_argument("--demand", type=float, default=1.1, help="requests per day against the sum of the allowances")
    args = parser.parse_args()

    allowances = scaled(ALLOWANCES, args.scale)
    per_model = daily_demand(allowances, args.demand)
    # Days ahead of the real date: the gateway's own sweeps (stale tasks, expired results) go by the real clock.
    first = pacific_day(utcnow()) + timedelta(days=2)
    days = [first + timedelta(days=d) for d in range(args.days)]
    requests = stream(first, args.days, per_model)
    interval = (day_start(first + timedelta(days=1)) - day_start(first)).total_seconds() / sum(per_model.values())
    letters = dict(zip(allowances, "AB", strict=True))
    print(f"account ledger over {args.days} simulated day(s) from {first} 00:00 Pacific: "
          f"{len(next(iter(allowances.values())))} accounts, {len(allowances)} models, scale {args.scale:g}")
    for model, per_account in allowances.items():
        print(f"  {letters[model]} = {model}: allowances {per_account} = {sum(per_account)} a day, demand {per_model[model]} a day")
    print(f"  {sum(per_model.values())} requests a day ({args.demand:.0%} of the allowances), one every {interval:.0f} s, "
          f"{len(requests)} in all, one at a time")
    print(f"  targets: served >= {TARGET_SERVED:.0%} of the allowances, at most {TARGET_QUOTA_ANSWERS} quota answer "
          "per account and model a day")

    runs = [await run_old(allowances, requests)]
    with tempfile.TemporaryDirectory() as tmp:
        runs.append(await run_ledger("the ledger (SQLite)", f"sqlite+aiosqlite:///{tmp}/bench.db", Path(tmp) / "sqlite",
                                     allowances, requests))
        admin_url = os.environ.get("AISTUDIO_TEST_POSTGRES_URL")
        if admin_url:
            runs.append(await run_ledger_on_postgres(admin_url, Path(tmp) / "postgres", allowances, requests))
        else:
            print("\n[the ledger (Postgres)] skipped: AISTUDIO_TEST_POSTGRES_URL is not set")
    ok = True
    for run in runs:
        met_all = report(run, days, letters)
        ok &= met_all or run is runs[0]  # the old policy is the baseline, not held to the targets
    summary(runs, days)
    print("\nthe ledger met every target" if ok else "\nTHE LEDGER MISSED A TARGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
