"""Chromium's shared memory with and without /dev/shm (a script, not a test): where it goes and how much.

Launches this machine's Chromium through Playwright with the instance's own launch options (instance/browser.py),
INSTANCE_DEV_SHM=use (shared memory in /dev/shm, what an instance pod's memory-backed emptyDir gets) and =avoid
(`--disable-dev-shm-usage`: shared memory in files under TMPDIR, the pod's 256 MiB disk-backed /tmp), in turns,
side by side in one run. Each round loads a page that paints a large canvas for a few seconds (renderer to browser
frames go through shared memory), then reads every Chromium process's mappings: the bytes mapped from /dev/shm,
from TMPDIR, and the processes' proportional set size (Pss).

    python tests/bench/bench_dev_shm.py [--rounds 3] [--paint-s 4]

What to look for: nothing in TMPDIR with `use` (nothing that counts as the pod's ephemeral storage, which the
kubelet evicts over). Measured with Debian's Chromium here: its shared-memory regions are memfd (anonymous memory)
in both modes, and neither /dev/shm nor TMPDIR held any: the flag decides only where the POSIX shared memory of
the paths that still use it goes. Pss alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from instance.browser import launch_options
from instance.settings import InstanceSettings

MIB = 1024 * 1024
PAGE = """<!doctype html><canvas id=c width=2560 height=1600></canvas><script>
const g = document.getElementById('c').getContext('2d'); let t = 0;
(function paint() { t++; for (let i = 0; i < 200; i++) { g.fillStyle = `hsl(${(i * 7 + t) % 360},80%,50%)`;
  g.fillRect((i * 97 + t * 13) % 2400, (i * 53 + t * 7) % 1500, 160, 100); } requestAnimationFrame(paint); })();
</script>"""
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s+(.*)$")


def chromium_pids(root: int) -> list[int]:
    """The browser process under Playwright's driver and all its children (renderers, GPU, utility)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return [p for p in found if "chrom" in _comm(p)]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip().lower()
    except OSError:
        return ""


def measure(pids: list[int], tmpdir: str) -> dict[str, float]:
    """MiB mapped from /dev/shm, from TMPDIR and from memfd regions (anonymous shared memory, counted once per
    process), and the processes' summed Pss."""
    shm: dict[str, int] = {}
    tmp: dict[str, int] = {}
    memfd = 0
    pss = 0
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        pss += int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE).group(1)) * 1024
        for line in maps:
            m = _MAPPING.match(line)
            if not m:
                continue
            path, size = m.group(3).removesuffix(" (deleted)"), int(m.group(2), 16) - int(m.group(1), 16)
            if path.startswith("/dev/shm/"):
                shm[path] = max(shm.get(path, 0), size)
            elif path.startswith(tmpdir):
                tmp[path] = max(tmp.get(path, 0), size)
            elif path.startswith("/memfd:"):
                memfd += size
    return {"dev_shm_mib": sum(shm.values()) / MIB, "tmpdir_mib": sum(tmp.values()) / MIB,
            "memfd_mib": memfd / MIB, "pss_mib": pss / MIB}


async def one_round(mode: str, paint_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-shm-") as tmpdir:
        settings = InstanceSettings(_env_file=None, dev_shm=mode, browser_mode="headless", sandbox="off")
        options = launch_options(settings, None)
        options["env"] = {**os.environ, "TMPDIR": tmpdir}
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(**options)
            page = await browser.new_page(viewport={"width": 1440, "height": 900})
            await page.set_content(PAGE)
            await asyncio.sleep(paint_s)
            figures = measure(chromium_pids(os.getpid()), tmpdir)
            await browser.close()
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paint-s", type=float, default=4.0)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"use": [], "avoid": []}
    for _ in range(args.rounds):
        for mode, rounds in results.items():  # in turns: the machine's load falls on both alike
            rounds.append(await one_round(mode, args.paint_s))
    print(f"{'INSTANCE_DEV_SHM':<18}{'/dev/shm MiB':>14}{'TMPDIR MiB':>12}{'memfd MiB':>11}{'Pss MiB':>10}")
    for mode, rounds in results.items():
        mean = {k: sum(r[k] for r in rounds) / len(rounds) for k in rounds[0]}
        print(f"{mode:<18}{mean['dev_shm_mib']:>14.1f}{mean['tmpdir_mib']:>12.1f}{mean['memfd_mib']:>11.1f}"
              f"{mean['pss_mib']:>10.1f}")
    use, avoid = (sum(r["pss_mib"] for r in results[m]) / args.rounds for m in ("use", "avoid"))
    print(f"Pss ratio use/avoid: {use / avoid:.3f} ({args.rounds} rounds, {args.paint_s:g} s of painting each)")


if __name__ == "__main__":
    asyncio.run(main())
