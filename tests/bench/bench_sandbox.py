"""Chromium's sandbox in the instance container (a script, not a test): start time and memory with it and
without it, under the gateway's container settings (every capability dropped, no-new-privileges).

    python tests/bench/bench_sandbox.py [--starts 3]

`off` is Docker's default seccomp profile (no user namespaces: the instance runs Chromium --no-sandbox
--no-zygote); `on` is gateway/runtime/instance-seccomp.json, where the instance's `auto` turns the sandbox on
(a zygote, renderers in their own user, PID and network namespaces); `on-ro` is `on` with the read-only root
and tmpfs mounts the docker runtime gives instance containers (Chromium's profile and cache then count as memory).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gateway.runtime.docker import instance_tmpfs  # noqa: E402
from tests.bench.bench_instance import (  # noqa: E402
    INSTANCE_IMAGE, TOKEN, Bench, cgroup_memory_mib, published_port, wait_http,
)

PROFILE = REPO / "gateway" / "runtime" / "instance-seccomp.json"


class SandboxBench(Bench):
    def run_instance(self, extra_env: dict[str, str] | None = None):
        security = ["no-new-privileges"]
        mode = (extra_env or {}).pop("SECCOMP", None)
        if mode in ("sandbox", "sandbox-ro"):
            security.append(f"seccomp={PROFILE.read_text()}")
        # as the docker runtime makes them by default: read-only root, tmpfs where Chromium writes
        read_only = {"read_only": True, "tmpfs": instance_tmpfs("10001:10001")} if mode == "sandbox-ro" else {}
        container = self.client.containers.run(
            INSTANCE_IMAGE, detach=True, network=self.network.name, labels={"io.aistudio-fleet.bench": "1"},
            environment={"INSTANCE_AISTUDIO_URL": f"http://bench-sim-{self.tag}:9000", "INSTANCE_API_TOKEN": TOKEN,
                         **(extra_env or {})},
            ports={"8000/tcp": ("127.0.0.1", None)}, shm_size="512m", mem_limit="1g", cap_drop=["ALL"],
            security_opt=security, user="10001:10001", **read_only,
        )
        self.containers.append(container)
        return container


def processes(container) -> tuple[int, bool]:
    """How many processes the container runs, and whether a renderer sits in a user namespace of its own."""
    script = ("b=$(readlink /proc/$(pgrep -o -f 'chrom.*--remote-debugging' || pgrep -o chromium)/ns/user); n=0; "
              "for p in $(pgrep -f 'type=renderer'); do [ \"$(readlink /proc/$p/ns/user)\" != \"$b\" ] && n=1; done; "
              "echo $(ls -d /proc/[0-9]* | wc -l) $n")
    count, isolated = container.exec_run(["sh", "-c", script]).output.decode().split()[-2:]
    return int(count), isolated == "1"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    bench = SandboxBench()
    rows = {}
    try:
        bench.start_simulator()
        for mode in ("off", "on", "on-ro"):
            starts, memory, procs, isolated, browser_up = [], [], [], [], []
            for _ in range(args.starts):
                seconds, container = bench.cold_start({"SECCOMP": {"on": "sandbox", "on-ro": "sandbox-ro"}.get(mode, "default")})
                starts.append(seconds)
                time.sleep(5)  # idle: page loaded, nothing running
                memory.append(cgroup_memory_mib(container)["usage"])
                count, alone = processes(container)
                procs.append(count)
                isolated.append(alone)
                log = container.logs().decode(errors="replace")
                browser_up += [float(line.split("browser up in ")[1].split()[0]) for line in log.splitlines()
                               if "browser up in " in line]
                sandbox_line = next((line for line in log.splitlines() if "sandbox" in line), "?")
                url = f"http://127.0.0.1:{published_port(container)}"
                wait_http(url + "/status", lambda r: r.status_code == 200, 10, {"Authorization": f"Bearer {TOKEN}"})
                container.remove(force=True)
                bench.containers.remove(container)
            rows[mode] = (starts, memory, procs, isolated, browser_up, sandbox_line)
    finally:
        bench.close()
    print(f"\nChromium sandbox in the instance container ({args.starts} starts each)")
    print(f"{'mode':<6}{'start p50 s':>12}{'browser up ms':>15}{'idle MiB':>10}{'processes':>11}  renderer isolated")
    for mode, (starts, memory, procs, isolated, browser_up, line) in rows.items():
        print(f"{mode:<6}{statistics.median(starts):>12.2f}{statistics.median(browser_up or [0]):>15.0f}"
              f"{statistics.median(memory):>10.0f}{statistics.median(procs):>11.0f}  {all(isolated)}")
        print(f"      log: {line.split(': ', 1)[-1].strip()[:120]}")


if __name__ == "__main__":
    main()
