"""The kubernetes runtime's API traffic, against the API stand-in of tests/kube (not a cluster: its latency is a
loopback aiohttp server's, so the figures are the runtime's own cost and its request counts).

Run: python tests/bench/bench_kubernetes.py [--instances 500] [--starts 60] [--qps 20] [--burst 40]
Prints: one list_managed over N pods (requests sent, time), and N starts at once under the client-side pacing
(requests sent, time, time spent waiting for the pacer).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.runtime.base import InstanceSpec  # noqa: E402
from gateway.runtime.kube_objects import Names, PodTemplate, pod_body  # noqa: E402
from gateway.runtime.kubernetes import KubernetesRuntime  # noqa: E402
from tests.kube.apiserver import FakeApiServer  # noqa: E402

NAMESPACE = "bench"


async def main(args: argparse.Namespace) -> None:
    server = FakeApiServer()
    await server.start()
    with tempfile.TemporaryDirectory() as folder:
        config = server.kubeconfig(Path(folder) / "kubeconfig", NAMESPACE)
        template = PodTemplate(image="aistudio-fleet-instance:latest")
        rt = KubernetesRuntime(template, kubeconfig=config, name_prefix="bench-", api_rate=args.qps, api_burst=args.burst)
        names = Names("bench-")
        for i in range(args.instances):
            spec = InstanceSpec(str(uuid.UUID(int=i)), f"i{i}", "t")
            server.objects[("pods", NAMESPACE, names.pod(spec.instance_id))] = pod_body(names, spec, NAMESPACE, template)
            server.run_pod(NAMESPACE, names.pod(spec.instance_id), ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        await rt.setup()
        timings = []
        for _ in range(5):
            before = len(server.requests)
            began = time.perf_counter()
            found = await rt.list_managed()
            timings.append(time.perf_counter() - began)
            assert len(found) == args.instances
        print(f"list_managed over {args.instances} pods: {len(server.requests) - before} request, "
              f"p50 {statistics.median(timings) * 1000:.0f} ms (5 runs)")

        before, waited = len(server.requests), rt.pacer.waited
        began = time.perf_counter()
        specs = [InstanceSpec(str(uuid.uuid4()), f"s{i}", "t") for i in range(args.starts)]
        await asyncio.gather(*(rt.start(spec) for spec in specs))
        took = time.perf_counter() - began
        sent = len(server.requests) - before
        print(f"{args.starts} starts at once: {sent} requests ({sent / args.starts:.0f} per start) in {took:.2f} s, "
              f"{rt.pacer.waited - waited:.2f} s waited for the pacer (qps {args.qps:g}, burst {args.burst}); "
              f"target: no more than qps x seconds + burst = {args.qps * took + args.burst:.0f}")
        await rt.close()
    await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--starts", type=int, default=60)
    parser.add_argument("--qps", type=float, default=20)
    parser.add_argument("--burst", type=int, default=40)
    asyncio.run(main(parser.parse_args()))
