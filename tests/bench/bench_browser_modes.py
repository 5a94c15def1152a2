"""Browser-mode benchmark (a script, not a test): idle memory, cold start and bot-check signals per mode.

Runs the built images on the local Docker engine, every mode side by side in one run: the simulator in one
container, instance containers beside it with INSTANCE_BROWSER_MODE = headed | headless | headless-shell
(started in turns, so that the machine's load falls on every mode alike), then the bot-check page served by
a sidecar in one instance's network namespace per mode (tests/botcheck).

    python tests/bench/bench_browser_modes.py [--starts 5] [--modes headed,headless,headless-shell]

Targets (issue 8), for the mode chosen for the real AI Studio (headed): idle memory <= 300 MiB, cold start
<= 3 s, no bot-check signal but WebGL in software.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_instance import LABEL, SIMULATOR_IMAGE, TOKEN, Bench, cgroup_memory_mib, percentile  # noqa: E402
from tests.bench.bench_instance import published_port  # noqa: E402
from tests.botcheck import sidecar  # noqa: E402
from tests.botcheck.signals import SOFT_SIGNALS  # noqa: E402

MODES = ("headed", "headless", "headless-shell")
IDLE_S = 10  # page loaded, nothing running: what an idle pool holds


def cpu_seconds(container) -> float:
    """CPU time the container has used so far: unlike wall time, it does not grow with the machine's load."""
    return container.stats(stream=False, one_shot=True)["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9


def botcheck(bench: Bench, container, mode: str) -> dict[str, str]:
    """The signals the bot-check page sees from this instance's browser."""
    side = sidecar.run_sidecar(bench.client, SIMULATOR_IMAGE, container, f"bench-botcheck-{mode}-{bench.tag}", LABEL)
    bench.containers.append(side)
    url = f"http://127.0.0.1:{published_port(container)}/navigate"
    answer = httpx.post(url, json={"url": sidecar.PAGE_URL}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    answer.raise_for_status()
    return sidecar.read_report(side)["signals"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = args.modes.split(",")
    bench = Bench()
    starts: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    containers: dict[str, list] = {m: [] for m in modes}
    try:
        bench.start_simulator()
        for _ in range(args.starts):
            for mode in modes:
                seconds, container = bench.cold_start({"INSTANCE_BROWSER_MODE": mode})
                starts[mode].append(seconds)
                cpu[mode].append(cpu_seconds(container))
                containers[mode].append(container)
        time.sleep(IDLE_S)
        memory = {m: [cgroup_memory_mib(c) for c in containers[m]] for m in modes}
        signals = {m: botcheck(bench, containers[m][0], m) for m in modes}
        load = os.getloadavg()
    finally:
        bench.close()

    print(f"\nBrowser modes ({args.starts} cold starts each, {IDLE_S} s idle; load average {load[0]:.1f} "
          f"on {os.cpu_count()} CPUs)")
    print(f"{'mode':<16}{'cold start p50':>15}{'max':>7}{'CPU to ready':>13}{'idle MiB p50':>14}{'max':>7}"
          f"{'anon p50':>10}   "
          f"bot-check signals (soft: {', '.join(sorted(SOFT_SIGNALS))})")
    for mode in modes:
        usage = [m["usage"] for m in memory[mode]]
        anon = [m["anon"] for m in memory[mode]]
        fired = ", ".join(f"{n}{' (soft)' if n in SOFT_SIGNALS else ''}" for n in signals[mode]) or "none"
        print(f"{mode:<16}{percentile(starts[mode], .5):>14.2f}s{max(starts[mode]):>6.2f}s"
              f"{percentile(cpu[mode], .5):>12.2f}s{percentile(usage, .5):>14.0f}{max(usage):>7.0f}{percentile(anon, .5):>10.0f}   {fired}")
    print("targets for the mode chosen for the real AI Studio (headed): cold start p50 <= 3 s, idle <= 300 MiB")


if __name__ == "__main__":
    main()
