"""A bounded load test of ``dlm serve`` on loopback: a few concurrent openai clients, a fixed number of requests.

    python benchmarks/serve_load.py                          # dlm-demo, 4 clients, 300 requests, queue 8
    python benchmarks/serve_load.py --clients 8 --queue-size 2 --requests 200
    python benchmarks/serve_load.py --clients 8 -p quality --max-batch 1,8   # batch 1 against 8, interleaved

It starts the real command (``dlm serve --host 127.0.0.1 --port <free>``) as a subprocess, learns
each prompt's greedy answer with one request at a time, then lets the clients send the requests
(chat and completions, streamed and not, in turn) until all are sent or the deadline passes.
Every answer is checked: it must be the full greedy answer, or a 503 saying the queue is full.
Anything else (a wrong or cut answer, another error, a request never answered) is a failure and
the exit status is 1. Prints requests/s and the p50/p99 latency of the answered requests.

``--max-batch 1,8`` starts one server per batch size (``dlm serve --max-batch N``) and runs the load
``--rounds`` times on each, in turn (1, 8, 1, 8, ...), so a shared machine's load changes hit both
alike; it prints a row per round and the ratio of the summed requests/s against the first size.
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
             prompts: list[str] = PROMPTS, want: dict[tuple[str, str], str] | None = None) -> Outcome:
    """Send ``requests`` requests from ``clients`` threads (each with its own openai client), at most ``deadline`` s.
    ``want``: the expected answers (default: this server's, one request at a time)."""
    import openai

    want = want if want is not None else expected_answers(base_url, model, prompts)
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


def start_server(args: argparse.Namespace, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "dlm_cli", "serve", "-m", args.model, "--port", str(port), "--queue-size",
           str(args.queue_size), "--threads", str(args.threads), "--max-batch", str(max_batch),
           *(["-p", args.profile] if args.profile else [])]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/dlm/status", timeout=2).close()
            return server, base
        except OSError:
            if server.poll() is not None:
                raise SystemExit(server.stderr.read())
            time.sleep(0.1)
    raise SystemExit(f"the server on {base} did not answer within a minute")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dlm-demo")
    ap.add_argument("-p", "--profile", default=None)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--queue-size", type=int, default=8)
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds after which no new request is sent")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--max-batch", default="1", help="the server's --max-batch; several (1,8): one server each, "
                    "measured in turn")
    ap.add_argument("--rounds", type=int, default=1, help="load runs per batch size, interleaved")
    args = ap.parse_args()
    sizes = [int(x) for x in args.max_batch.split(",")]

    servers = {}
    failed = False
    rates: dict[int, list[float]] = {n: [] for n in sizes}
    print(f"{args.model} · profile {args.profile or '(default)'} · {args.clients} clients · queue {args.queue_size} · "
          f"{args.requests} requests a round · torch threads {args.threads}")
    print("| max batch | round | requests | answered in full | 503 (queue full) | wrong | errors | not sent (deadline) "
          "| s | req/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for n in sizes:
            servers[n] = start_server(args, n)
        # Every server's answers must be the first one's, learned one request at a time (batch 1 when it is 1).
        want = expected_answers(servers[sizes[0]][1], args.model, PROMPTS)
        for k in range(args.rounds):
            for n in sizes:
                base = servers[n][1]
                out = run_load(base, args.model, clients=args.clients, requests=args.requests, deadline=args.deadline,
                               want=want)
                with urllib.request.urlopen(base + "/dlm/status", timeout=10) as r:
                    status = json.load(r)
                lost = args.requests - out.sent
                lat = out.latencies
                rates[n].append(out.sent / out.seconds)
                print(f"| {status['batch_size']} | {k + 1} | {out.sent} | {out.ok} | {out.busy} | {len(out.wrong)} | "
                      f"{len(out.errors)} | {lost} | {out.seconds:.1f} | {out.sent / out.seconds:.1f} | "
                      f"{1000 * statistics.median(lat) if lat else 0:.0f} | {1000 * percentile(lat, 0.99):.0f} |")
                for line in (out.wrong + out.errors)[:10]:
                    print("  " + line)
                failed = failed or bool(out.wrong or out.errors or status["failed"])
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(30)
    for n in sizes[1:]:
        print(f"max batch {n} / max batch {sizes[0]}: {sum(rates[n]) / sum(rates[sizes[0]]):.2f}x requests/s "
              f"(summed over {args.rounds} round(s) each)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
