"""Instance benchmark (a script, not a test): cold start, idle memory, per-generation overhead.

Runs the real images on the local Docker engine: the simulator in one container, instance containers
beside it on one network. Prints every figure side by side from this one run.

    python tests/bench/bench_instance.py [--starts 7] [--generations 15]

Targets (issue 2): cold start p50 <= 3 s; idle memory <= 200 MiB; overhead p50 <= 300 ms without a
reference image and <= 600 ms with one 1 MB image.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from a checkout

import docker  # noqa: E402
import httpx  # noqa: E402

from tests.polling import wait_until  # noqa: E402

INSTANCE_IMAGE = os.environ.get("BENCH_INSTANCE_IMAGE", "aistudio-fleet-instance:latest")
SIMULATOR_IMAGE = os.environ.get("BENCH_SIMULATOR_IMAGE", "aistudio-fleet-simulator:latest")
LABEL = {"io.aistudio-fleet.bench": "1"}
TOKEN = "bench-token"
LATENCY_MS = 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def published_port(container, timeout: float = 10) -> int:
    """The host port Docker published; it shows in inspect a moment after the container starts."""

    def bindings() -> list | None:
        container.reload()
        return container.ports.get("8000/tcp") or container.ports.get("9000/tcp")

    found = wait_until(bindings, timeout=timeout, what=lambda: f"{container.name} to publish a port ({container.status})",
                       pause=0.02)
    return int(found[0]["HostPort"])


def wait_http(url: str, ok, timeout: float, headers: dict | None = None) -> float:
    """Seconds until `ok(response)` holds, polling every 20 ms."""
    start = time.monotonic()
    with httpx.Client(timeout=2, headers=headers) as client:
        wait_until(lambda: client.get(url), until=ok, timeout=timeout, what=url, ignore=(httpx.HTTPError,), pause=0.02)
    return time.monotonic() - start


def cgroup_memory_mib(container) -> dict[str, float]:
    """What `docker stats` shows (usage minus inactive file cache) and the anonymous part alone."""
    stats = container.stats(stream=False)["memory_stats"]
    inner = stats.get("stats", {})
    usage = stats["usage"] - inner.get("inactive_file", inner.get("total_inactive_file", 0))
    return {"usage": usage / 2**20, "anon": inner.get("anon", inner.get("rss", 0)) / 2**20}


def noise_png(target_bytes: int) -> bytes:
    """An incompressible PNG of about `target_bytes` (random pixels)."""
    from PIL import Image

    side = int((target_bytes / 3) ** 0.5)
    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


class Bench:
    def __init__(self) -> None:
        self.client = docker.from_env()
        self.tag = uuid.uuid4().hex[:8]
        self.network = self.client.networks.create(f"aistudio-bench-{self.tag}", labels=LABEL)
        self.containers: list = []

    def close(self) -> None:
        for container in self.containers:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
        self.network.remove()

    def start_simulator(self) -> str:
        sim = self.client.containers.run(
            SIMULATOR_IMAGE, detach=True, name=f"bench-sim-{self.tag}", network=self.network.name,
            ports={"9000/tcp": ("127.0.0.1", None)}, labels=LABEL,
        )
        self.containers.append(sim)
        url = f"http://127.0.0.1:{published_port(sim)}"
        wait_http(url + "/_sim/record", lambda r: r.status_code == 200, 30)
        # The copyright acknowledgement shows after the first upload of every fresh page, as on the real one.
        httpx.post(url + "/_sim/config", json={"signin_required": False, "latency_ms": LATENCY_MS,
                                               "image_stagger_ms": 0, "copyright_dialog": True})
        return url

    def run_instance(self, extra_env: dict[str, str] | None = None):
        container = self.client.containers.run(
            INSTANCE_IMAGE, detach=True, network=self.network.name, labels=LABEL,
            environment={"INSTANCE_AISTUDIO_URL": f"http://bench-sim-{self.tag}:9000", "INSTANCE_API_TOKEN": TOKEN,
                         **(extra_env or {})},
            ports={"8000/tcp": ("127.0.0.1", None)}, shm_size="256m", mem_limit="1g",
        )
        self.containers.append(container)
        return container

    def cold_start(self, extra_env: dict[str, str] | None = None) -> tuple[float, object]:
        """Container start to ready with the AI Studio page loaded, as the gateway would see it."""
        started = time.monotonic()
        container = self.run_instance(extra_env)
        url = f"http://127.0.0.1:{published_port(container)}/status"
        wait_http(url, lambda r: r.status_code == 200 and r.json().get("login_state") == "logged_in", 60,
                  {"Authorization": f"Bearer {TOKEN}"})
        return time.monotonic() - started, container

    def overhead(self, container, refs: list[str], count: int) -> tuple[list[float], list[dict]]:
        url = f"http://127.0.0.1:{published_port(container)}/generate"
        extra, timings = [], []
        with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            for i in range(count + 1):
                started = time.monotonic()
                answer = client.post(url, json={"prompt": f"bench {i} 基准", "aspect_ratio": "16:9",
                                                "reference_images_b64": refs}).json()
                elapsed_ms = (time.monotonic() - started) * 1000
                if not answer["success"]:
                    raise RuntimeError(answer["error"])
                if i:  # the first one warms the page up
                    extra.append(elapsed_ms - LATENCY_MS)
                    timings.append(answer["timings"])
        return extra, timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=7)
    parser.add_argument("--generations", type=int, default=15)
    args = parser.parse_args()
    bench = Bench()
    try:
        bench.start_simulator()
        starts, memory, last = [], [], None
        for _ in range(args.starts):
            seconds, container = bench.cold_start()
            starts.append(seconds)
            if last is not None:
                last.remove(force=True)
            last = container
        time.sleep(5)  # idle: page loaded, nothing running
        memory.append(cgroup_memory_mib(last))
        ref = base64.b64encode(noise_png(1_000_000)).decode()
        plain, plain_t = bench.overhead(last, [], args.generations)
        with_ref, ref_t = bench.overhead(last, [ref], args.generations)
        memory.append(cgroup_memory_mib(last))
    finally:
        bench.close()

    print(f"\nInstance benchmark ({INSTANCE_IMAGE}, simulator latency {LATENCY_MS} ms)")
    print(f"{'figure':<44}{'p50':>10}{'p90':>10}{'max':>10}   target")
    print(f"{'cold start, container start to page ready (s)':<44}"
          f"{percentile(starts, .5):>10.2f}{percentile(starts, .9):>10.2f}{max(starts):>10.2f}   p50 <= 3 s")
    print(f"{'idle memory, cgroup usage - inactive file':<44}{memory[0]['usage']:>9.0f}M"
          f"{'':>10}{'':>10}   <= 200 MiB   (anon {memory[0]['anon']:.0f} MiB)")
    print(f"{'memory after the generations':<44}{memory[1]['usage']:>9.0f}M"
          f"{'':>10}{'':>10}   (anon {memory[1]['anon']:.0f} MiB)")
    for name, values, timings, target in (("overhead per generation, no reference (ms)", plain, plain_t, 300),
                                          ("overhead per generation, 1 MB reference (ms)", with_ref, ref_t, 600)):
        print(f"{name:<44}{percentile(values, .5):>10.0f}{percentile(values, .9):>10.0f}{max(values):>10.0f}"
              f"   p50 <= {target} ms")
        phases = {k: statistics.median(t.get(k, 0) for t in timings) for k in timings[0] if k != "total_ms"}
        print(f"{'':<6}instance phases (median ms): " + ", ".join(f"{k}={v:.0f}" for k, v in phases.items()))


if __name__ == "__main__":
    main()
