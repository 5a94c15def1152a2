"""A new chat per turn, or the same AI Studio chat on the same account? Measured on the simulator (a script, not a test).

    python tests/bench/bench_chat_continuation.py [--instances 2] [--conversations 1 2 4] [--think-s 3]

Real instances (Chromium) against the simulator, made as slow as the real page where it matters here: a new chat
page takes `--page-ms` to come up, an attached file `--upload-ms` to upload, a generation `--latency-ms`. Each
conversation is three edit turns ("a cat on a sofa", "now make it red", "add a hat"), a user pausing `--think-s`
between an answer and the next turn. The script plays the dispatcher's part with each policy, side by side on the
same instances:

- fresh: every turn goes to any idle instance as a new chat, carrying the earlier images as references and the
  earlier requests as context (gateway/api/conversation.py, as the gateway sends it today);
- affinity: every turn asks to keep its chat; a next turn goes to the instance that holds its chat when that one is
  idle (continue_chat: the new words alone, nothing uploaded), and otherwise falls back to any idle instance as a
  new chat like `fresh`. A kept chat that another conversation's turn lands on costs that turn a new page load.
  The script's fallback prefers an idle page that holds no chat; the gateway's lease takes the least recently used
  account, which is rarely the one that just kept a chat.

Prints, per policy and load: turn latency (mean, p50, p90, from request to answer, queueing included), the later
turns' latency alone, the whole run's makespan, how many later turns continued their chat, the files uploaded and the
earlier images the page sent the model again (history).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.api.conversation import Turn, read  # noqa: E402
from tests.instance.harness import RunningInstance, signed_in_state, start_instance  # noqa: E402
from tests.simulator.fixtures import control, start_simulator  # noqa: E402

WORDS = ("a cat on a sofa", "now make it red", "add a hat")
MODEL = "gemini-nano-banana-2.1"


@dataclass
class Worker:
    instance: RunningInstance
    busy: bool = False
    holds: str | None = None  # the task whose chat the page keeps (affinity)


@dataclass
class Pool:
    """The dispatcher's part: idle instances, a FIFO of waiting turns, and the policy's choice."""

    workers: list[Worker]
    affinity: bool
    lock: threading.Condition = field(default_factory=threading.Condition)
    tickets: list[int] = field(default_factory=list)
    next_ticket: int = 0

    def acquire(self, previous_task: str | None) -> tuple[Worker, bool]:
        with self.lock:
            ticket = self.next_ticket
            self.next_ticket += 1
            self.tickets.append(ticket)
            while True:
                if self.tickets[0] == ticket:
                    chosen = self._choose(previous_task)
                    if chosen is not None:
                        self.tickets.pop(0)
                        chosen[0].busy = True
                        self.lock.notify_all()
                        return chosen
                self.lock.wait()

    def _choose(self, previous_task: str | None) -> tuple[Worker, bool] | None:
        idle = [w for w in self.workers if not w.busy]
        if not idle:
            return None
        if self.affinity and previous_task is not None:
            for worker in idle:
                if worker.holds == previous_task:
                    return worker, True
        # prefer a page that holds no one's chat: landing on a kept chat costs a new load
        idle.sort(key=lambda w: w.holds is not None)
        return idle[0], False

    def release(self, worker: Worker, kept_task: str | None) -> None:
        with self.lock:
            worker.busy = False
            worker.holds = kept_task
            self.lock.notify_all()


@dataclass
class TurnResult:
    index: int
    seconds: float
    continued: bool
    tried_continue: bool


def conversation(pool: Pool, name: str, think_s: float, results: list[TurnResult]) -> None:
    turns: list[Turn] = []
    previous_task: str | None = None
    for index, words in enumerate(WORDS):
        turns.append(Turn("user", [words]))
        built = read(turns, max_references=4, takes_references=True, context_chars=600, max_prompt_chars=10_000)
        task_id = f"{name}-{index}"
        body = {"prompt": built.prompt, "model": MODEL, "aspect_ratio": "1:1", "task_id": task_id,
                "reference_images_b64": [image.split(",", 1)[1] for image in built.images]}
        started = time.perf_counter()
        worker, at_home = pool.acquire(previous_task)
        if pool.affinity:
            body["keep_chat"] = True
            if at_home:
                body |= {"continue_chat": previous_task, "turn_prompt": words}
        answer: dict = {}
        try:
            answer = worker.instance.generate(**body).json()
        finally:
            pool.release(worker, task_id if pool.affinity and answer.get("success") else None)
        if not answer.get("success"):
            raise RuntimeError(f"{task_id}: {answer.get('error')}")
        results.append(TurnResult(index, time.perf_counter() - started, answer.get("continued", False), at_home))
        turns.append(Turn("model", [], [f"data:image/png;base64,{answer['images_b64'][0]}"]))
        previous_task = task_id
        if index < len(WORDS) - 1:
            time.sleep(think_s)


def run(pool: Pool, conversations: int, think_s: float, sim_url: str) -> dict:
    before = len(control(sim_url, "/_sim/record")["generations"])
    results: list[TurnResult] = []
    started = time.perf_counter()
    threads = [threading.Thread(target=conversation, args=(pool, f"c{n}-{time.monotonic_ns()}", think_s, results))
               for n in range(conversations)]
    for n, thread in enumerate(threads):
        thread.start()
        time.sleep(0.2 if n else 0)  # conversations begin a little apart, as users do
    for thread in threads:
        thread.join()
    makespan = time.perf_counter() - started
    made = control(sim_url, "/_sim/record")["generations"][before:]
    return {"results": results, "makespan": makespan, "uploads": sum(len(g["uploads"]) for g in made),
            "history_images": sum(len(g["history_images"]) for g in made)}


def summary(policy: str, conversations: int, outcome: dict) -> str:
    seconds = sorted(r.seconds for r in outcome["results"])
    later = [r for r in outcome["results"] if r.index > 0]
    continued = sum(r.continued for r in later)

    def p(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    later_s = sorted(r.seconds for r in later)
    return (f"{policy:<9}{conversations:>6}{statistics.mean(seconds):>9.2f}{p(seconds, .5):>8.2f}{p(seconds, .9):>8.2f}"
            f"{statistics.mean(later_s):>10.2f}{outcome['makespan']:>10.1f}{continued:>6}/{len(later):<4}"
            f"{outcome['uploads']:>8}{outcome['history_images']:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--conversations", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--think-s", type=float, default=3.0)
    parser.add_argument("--page-ms", type=int, default=2000)
    parser.add_argument("--upload-ms", type=int, default=1000)
    parser.add_argument("--latency-ms", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=1, help="repeat each (policy, load) pair, alternating policies")
    args = parser.parse_args()
    with start_simulator() as sim_url, tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        control(sim_url, "/_sim/config", {"page_delay_ms": args.page_ms, "upload_delay_ms": args.upload_ms,
                                          "latency_ms": args.latency_ms, "copyright_dialog": False})
        workers = []
        for n in range(args.instances):
            account = f"bench-{n}"
            running = stack.enter_context(start_instance(
                sim_url, Path(tmp) / account, session=signed_in_state(sim_url, account),
                INSTANCE_PAGE_LOAD_TIMEOUT_S="30", INSTANCE_GENERATION_TIMEOUT_S="60", INSTANCE_ELEMENT_TIMEOUT_S="10"))
            running.wait_for(lambda s: s["ready"] and s["login_state"] == "logged_in", timeout=60, what="signed in")
            workers.append(Worker(running))
        print(f"{args.instances} instances; page {args.page_ms} ms, upload {args.upload_ms} ms, generation "
              f"{args.latency_ms} ms, think {args.think_s} s; 3 turns per conversation")
        print(f"{'policy':<9}{'convs':>6}{'mean s':>9}{'p50':>8}{'p90':>8}{'later s':>10}{'makespan':>10}"
              f"{'cont':>6}{'':<5}{'uploads':>8}{'history':>9}")
        for conversations in args.conversations:
            for _ in range(args.rounds):
                for affinity in (False, True):
                    for worker in workers:
                        worker.instance.generate("settle", model=MODEL)  # every page on a new chat, nothing kept
                        worker.holds = None
                    pool = Pool(workers, affinity)
                    outcome = run(pool, conversations, args.think_s, sim_url)
                    print(summary("affinity" if affinity else "fresh", conversations, outcome), flush=True)


if __name__ == "__main__":
    main()
