"""A bounded load test of ``dlm serve`` on loopback: a few concurrent openai clients, a fixed number of requests.

    python benchmarks/serve_load.py                          # dlm-demo, 4 clients, 300 requests, queue 8
    python benchmarks/serve_load.py --clients 8 --queue-size 2 --requests 200

It starts the real command (``dlm serve --host 127.0.0.1 --port <free>``) as a subprocess, learns
each prompt's greedy answer with one request at a time, then lets the clients send the requests
(chat and completions, streamed and not, in turn) until all are sent or the deadline passes.
Every answer is checked: it must be the full greedy answer, or a 503 saying the queue is full.
Anything else (a wrong or cut answer, another error, a request never answered) is a failure and
the exit status is 1. Prints requests/s and the p50/p99 latency of the answered requests.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Sort these numbers: 4 7 1 9 3", "Reverse: 12 7 33 5", "Copy: 8 41 3 77", "Add: 35 + 47",
           "Tell the walk story: name: Mia, animal: fox, place: park"]
KINDS = [("chat", False), ("completions", False), ("chat", True), ("completions", True)]


@dataclass
class Outcome:
    ok: int = 0
    busy: int = 0  # 503: the queue was full, said so
    wrong: list[str] = field(default_factory=list)  # an answer that is not the expected text
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    sent: int = 0
    seconds: float = 0.0


def ask(client, kind: str, stream: bool, prompt: str, model: str) -> str:
    """The answer's text, whole or streamed."""
    if kind == "chat":
        msgs = [{"role": "user", "content": prompt}]
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model=model, messages=msgs, seed=0, stream=True) if c.choices)
        return client.chat.completions.create(model=model, messages=msgs, seed=0).choices[0].message.content
    if stream:
        return "".join(c.choices[0].text for c in client.completions.create(
            model=model, prompt=prompt, seed=0, stream=True) if c.choices)
    return client.completions.create(model=model, prompt=prompt, seed=0).choices[0].text


def expected_answers(base_url: str, model: str, prompts: list[str]) -> dict[tuple[str, str], str]:
    import openai

    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    return {(kind, p): ask(client, kind, False, p, model) for kind in ("chat", "completions") for p in prompts}


def run_load(base_url: str, model: str, *, clients: int, requests: int, deadline: float,
             prompts: list[str] = PROMPTS) -> Outcome:
    """Send ``requests`` requests from ``clients`` threads (each with its own openai client), at most ``deadline`` s."""
    import openai

    want = expected_answers(base_url, model, prompts)
    out = Outcome()
    lock = threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + deadline

    def worker() -> None:
        client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            kind, stream = KINDS[i % len(KINDS)]
            prompt = prompts[(i // len(KINDS)) % len(prompts)]
            t0 = time.perf_counter()
            try:
                text = ask(client, kind, stream, prompt, model)
                took = time.perf_counter() - t0
                with lock:
                    out.sent += 1
                    out.latencies.append(took)
                    if text == want[(kind, prompt)]:
                        out.ok += 1
                    else:
                        out.wrong.append(f"#{i} {kind}{' stream' if stream else ''} {prompt!r}: {text!r}")
            except openai.APIStatusError as exc:
                message = exc.body.get("message", "") if isinstance(exc.body, dict) else str(exc.body)
                with lock:
                    out.sent += 1
                    if exc.status_code == 503 and "queue size" in message:
                        out.busy += 1
                    else:
                        out.errors.append(f"#{i}: HTTP {exc.status_code}: {message}")
            except openai.APIError as exc:
                with lock:
                    out.sent += 1
                    out.errors.append(f"#{i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline + 120)
    out.seconds = time.perf_counter() - t0
    return out


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dlm-demo")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--queue-size", type=int, default=8)
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds after which no new request is sent")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    args = ap.parse_args()

    port = free_port()
    cmd = [sys.executable, "-m", "dlm_cli", "serve", "-m", args.model, "--port", str(port), "--queue-size",
           str(args.queue_size), "--threads", str(args.threads), *(["-p", args.profile] if args.profile else [])]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/dlm/status", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None:
                    print(server.stderr.read(), file=sys.stderr)
                    return 1
                time.sleep(0.1)
        out = run_load(base, args.model, clients=args.clients, requests=args.requests, deadline=args.deadline)
        with urllib.request.urlopen(base + "/dlm/status", timeout=10) as r:
            status = json.load(r)
    finally:
        server.terminate()
        server.wait(30)
    lost = args.requests - out.sent
    lat = out.latencies
    print(f"{args.model} · {args.clients} clients · queue {args.queue_size} · {args.requests} requests")
    print("| requests | answered in full | 503 (queue full) | wrong | errors | not sent (deadline) | s | req/s | "
          "p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {out.sent} | {out.ok} | {out.busy} | {len(out.wrong)} | {len(out.errors)} | {lost} | {out.seconds:.1f} | "
          f"{out.sent / out.seconds:.1f} | {1000 * statistics.median(lat) if lat else 0:.0f} | "
          f"{1000 * percentile(lat, 0.99):.0f} |")
    print(f"server: served {status['served']}, rejected {status['rejected']}, cancelled {status['cancelled']}, "
          f"failed {status['failed']}")
    for line in (out.wrong + out.errors)[:10]:
        print("  " + line)
    return 1 if out.wrong or out.errors or status["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
