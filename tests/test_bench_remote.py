"""``dlm bench -p PROFILE,url:URL``: a running OpenAI-compatible server as a bench row.

Measured against ``dlm serve`` started here on a free loopback port (the texts must equal the same
profile's local row), and against a small fake server that cuts its stream mid-run; the bad URLs
and servers each give one ``dlm:`` line naming the row.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from test_serve import Running  # noqa: E402

from dlm_cli.bench.remote import parse_remote  # noqa: E402
from dlm_cli.cli import app  # noqa: E402
from dlm_cli.errors import UsageError  # noqa: E402

TOY = ["-m", "dlm-demo", "--tasks", "sort,copy,add", "--per-task", "1", "--reps", "1", "-n", "32"]


@pytest.fixture(scope="module")
def dllm():
    from dlm_cli.models.loading import load

    return load("dlm-demo")


@pytest.fixture(scope="module")
def served(dllm):
    s = Running(dllm, profile="speedy", api_key="k-sekrit-123")
    yield s
    s.stop()


def bench(*args: str) -> object:
    return CliRunner().invoke(app, ["bench", *TOY, *args])


def rows_of(r) -> dict[str, dict]:
    return {row["profile"]: row for row in json.loads(r.stdout)["rows"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the row against dlm serve -----------------------------------------------------------------

def test_a_url_row_on_dlm_serve_gives_the_local_rows_texts_and_tokens(served, monkeypatch):
    monkeypatch.setenv("DLM_BENCH_API_KEY", "k-sekrit-123")
    r = bench("-p", f"speedy,url:{served.url}/v1", "--json")
    assert r.exit_code == 0, r.stderr
    rows = rows_of(r)
    url = rows[f"url:127.0.0.1:{served.port}"]
    local = rows["speedy"]
    assert [a["answer"] for a in url["answers"]] == [a["answer"] for a in local["answers"]]
    assert [a["answer"] for a in local["answers"]] == ["0 1 2 7", "36 71 89", "1073"]  # not three empty strings
    assert url["agreement"] == 1.0 and url["score"] == local["score"] == 1.0
    assert url["generated_tokens"] == local["generated_tokens"] > 0  # counted by dlm-demo's tokenizer
    assert url["strategy"] == "remote" and url["baseline"] is False
    assert url["nfe"] is None and url["tokens_per_nfe"] is None  # the server's forwards: unknown, not invented
    assert url["weight_gbps"] is None and url["peak_memory_mb"] is None
    assert 0 < url["ttft_seconds"] <= url["seconds"]
    assert "k-sekrit-123" not in r.stdout + r.stderr


def test_the_table_shows_a_remote_rows_unknowns_as_such(served, monkeypatch):
    monkeypatch.setenv("DLM_BENCH_API_KEY", "k-sekrit-123")
    r = bench("-p", f"speedy,url:{served.url}/v1[name=served]", "--format", "md")
    assert r.exit_code == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("| served |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:4] == ["remote", "n/a", "n/a"] and cells[7] == "100%"
    assert "NFE, GB/s and memory are unknown" in r.stdout


def test_a_batched_bench_sends_a_batchs_prompts_together_with_the_same_texts(served, monkeypatch):
    monkeypatch.setenv("DLM_BENCH_API_KEY", "k-sekrit-123")
    r = bench("-p", f"quality,url:{served.url}/v1[extra={{\"profile\":\"quality\"}}]", "--batch-size", "3",
              "--set", "cache=none", "--json")
    assert r.exit_code == 0, r.stderr
    rows = rows_of(r)
    url = rows[f"url:127.0.0.1:{served.port}"]
    assert [a["answer"] for a in url["answers"]] == [a["answer"] for a in rows["baseline"]["answers"]]
    assert url["batch_size"] == 3 and url["agreement"] == 1.0


# -- bad input ---------------------------------------------------------------------------------

def test_a_url_with_credentials_is_refused_without_echoing_them():
    r = bench("-p", "speedy,url:http://alice:hunter2@127.0.0.1:1/v1")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("dlm: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "DLM_BENCH_API_KEY" in r.stderr and "hunter2" not in r.stderr and "alice" not in r.stderr


@pytest.mark.parametrize("item, says", [
    ("url:ftp://h/v1", "http:// or https://"),
    ("url:http://h:1/v1[model=a", "must close the item"),
    ("url:http://h:1/v1[temperature=1]", "KEY one of model, extra, api, name"),
    ("url:http://h:1/v1[extra=[1,2]]", "must be a JSON object"),
    ("url:http://h:1/v1[extra={\"stream\":false}]", "may not set stream"),
    ("url:http://h:1/v1[api=embeddings]", "chat or completions"),
])
def test_malformed_url_items_are_refused_in_one_line(item, says):
    with pytest.raises(UsageError, match="^-p url:") as exc:
        parse_remote(item)
    assert says in str(exc.value)


def test_the_option_brackets_parse_beside_an_ipv6_host_and_json_commas():
    r = parse_remote('url:http://[::1]:8000/v1/[model=m,extra={"set":["a=1","b=2"],"profile":"x"},api=completions]')
    assert (r.url, r.model, r.api, r.name) == ("http://[::1]:8000/v1", "m", "completions", "url:[::1]:8000")
    assert r.extra == {"set": ["a=1", "b=2"], "profile": "x"}


def test_an_unreachable_url_is_one_line_naming_the_row_before_anything_runs():
    port = free_port()
    r = bench("-p", f"speedy,url:http://127.0.0.1:{port}/v1")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.startswith(f"dlm: row url:127.0.0.1:{port}: cannot reach") and "Traceback" not in r.stderr


def test_a_wrong_api_key_says_where_the_key_goes_and_never_prints_it(served, monkeypatch):
    monkeypatch.setenv("DLM_BENCH_API_KEY", "not-the-key-42")
    r = bench("-p", f"speedy,url:{served.url}/v1")
    assert r.exit_code == 1 and "401" in r.stderr and "DLM_BENCH_API_KEY" in r.stderr
    assert "not-the-key-42" not in r.stderr + r.stdout and "k-sekrit-123" not in r.stderr + r.stdout


def test_a_model_the_server_does_not_list_is_refused_with_what_it_lists(served, monkeypatch):
    monkeypatch.setenv("DLM_BENCH_API_KEY", "k-sekrit-123")
    r = bench("-p", f"speedy,url:{served.url}/v1[model=llama-70b]")
    assert r.exit_code == 2 and r.stdout == ""
    assert "'llama-70b' is not served there; the server lists dlm-demo" in r.stderr


def test_a_server_answering_an_error_fails_its_row_in_one_line(served, monkeypatch):
    monkeypatch.setenv("DLM_BENCH_API_KEY", "k-sekrit-123")
    r = bench("-p", f"speedy,url:{served.url}/v1[extra={{\"profile\":\"no-such-profile\"}}]")
    errors = [x for x in r.stderr.splitlines() if not x.startswith("dlm: note:")]
    assert r.exit_code == 1 and r.stdout == "" and len(errors) == 1 and "Traceback" not in r.stderr
    assert errors[0].startswith(f"dlm: row url:127.0.0.1:{served.port}: POST /chat/completions answered 400: ")
    assert "no-such-profile" in errors[0]


# -- a server that cuts its stream mid-run -----------------------------------------------------

class Cutting(BaseHTTPRequestHandler):
    """An OpenAI-shaped server whose third chat request (the warm-up, prompt 1, prompt 2) is cut mid-stream."""

    protocol_version = "HTTP/1.1"
    asked = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.reply(200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode())

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).asked += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = [{"choices": [{"index": 0, "delta": {"content": "1 2"}, "finish_reason": None}]},
                  {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
        if type(self).asked == 3:  # one chunk, then the connection drops inside the chunked body
            self.chunk(f"data: {json.dumps(events[0])}\n\n")
            self.wfile.write(b"5\r\nda")
            self.wfile.flush()
            self.close_connection = True
            return
        for ev in events:
            self.chunk(f"data: {json.dumps({'id': 'x', 'object': 'chat.completion.chunk', 'created': 0, 'model': 'fake', **ev})}\n\n")
        self.chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class QuietServer(ThreadingHTTPServer):
    """The fake server's own errors (a client gone mid-reply) stay off the stderr the test reads: that
    stderr is dlm's, and a traceback there must be dlm's to fail the test."""

    def handle_error(self, request, client_address) -> None:
        pass


def test_a_stream_cut_mid_run_drops_its_row_and_keeps_the_others():
    server = QuietServer(("127.0.0.1", 0), Cutting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        r = bench("-p", f"speedy,url:http://127.0.0.1:{port}/v1", "--json")
    finally:
        server.shutdown()
    assert r.exit_code == 1
    out = json.loads(r.stdout)  # the table of the rows that finished, all three prompts
    assert [row["profile"] for row in out["rows"]] == ["baseline", "baseline+eotp", "speedy"]
    assert all(len(row["answers"]) == 3 for row in out["rows"])
    why = out["failed_rows"][f"url:127.0.0.1:{port}"]
    assert "the stream of POST /chat/completions was cut after 3 characters" in why
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dlm: row url:127.0.0.1:{port}: the stream") and "the others are complete" in last
    assert "Traceback" not in r.stderr
