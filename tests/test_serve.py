"""``dlm serve``: the real openai client against servers started here on 127.0.0.1, on the demo models.

Each server runs uvicorn in a thread over the app that ``dlm serve`` builds; the answers are held
against ``dlm generate`` on the same prompt, profile and seed. The browser test drives Debian's
Chromium headless through selenium.
"""

from __future__ import annotations

import json
import sys
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from dlm_cli.cli import app as cli_app  # noqa: E402

SORT = "Sort these numbers: 4 7 1 9 3"
REVERSE = "Reverse: 12 7 33 5"
LONG = 200  # generation slots for a decode that takes seconds (quality: one forward per slot)


class Running:
    """A served app on a free loopback port, uvicorn in a thread."""

    def __init__(self, model, draft=None, *, profile, queue_size=8, api_key=None, max_batch=1):
        from dlm_cli.serve import bind
        from dlm_cli.serve.app import LOOPBACK_NAMES, create_app
        from dlm_cli.serve.engine import Engine
        from dlm_cli.session import RunRequest, Session

        self.engine = Engine(Session(model, draft, profile, RunRequest(front="serve")), queue_size=queue_size,
                             max_batch=max_batch)
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        app = create_app(self.engine, api_key=api_key, hosts=list(LOOPBACK_NAMES))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, api_key="unused", **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kw)

    def status(self):
        with urllib.request.urlopen(self.url + "/dlm/status", timeout=10) as r:
            return json.load(r)

    def wait(self, check, what, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if check(st):
                return st
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {st}"
            time.sleep(0.01)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def dllm():
    from dlm_cli.models.loading import load

    return load("dlm-demo")


@pytest.fixture(scope="module")
def long_dllm():
    """The toy trained on canvases of up to 256 slots: a decode of LONG slots that takes seconds."""
    from dlm_cli.models.loading import load

    return load("dlm-demo-long")


@pytest.fixture(scope="module")
def ar_pair():
    from dlm_cli.models.loading import load

    return load("dlm-demo-ar"), load("dlm-demo-ar-draft", role="draft")


@pytest.fixture(scope="module")
def served(dllm):
    s = Running(dllm, profile="speedy")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def served_ar(ar_pair):
    s = Running(*ar_pair, profile="speculative")
    yield s
    s.stop()


def generate_json(*args: str) -> dict:
    r = CliRunner().invoke(cli_app, ["generate", "--json", "--seed", "0", *args])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def sse_blocks(url: str, body: dict) -> list[tuple[str | None, str]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        raw = r.read().decode()
    out = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
        out.append((name, data))
    return out


# -- answers -----------------------------------------------------------------------------------

def test_models_lists_the_one_served_model(served):
    models = served.client().models.list().data
    assert [m.id for m in models] == ["dlm-demo"]
    assert models[0].model_extra["kind"] == "diffusion" and models[0].model_extra["profile"] == "speedy"


def test_chat_answer_is_dlm_generates_text_with_its_counts(served):
    cli = generate_json("-m", "dlm-demo", SORT)
    r = served.client().chat.completions.create(model="dlm-demo", messages=[{"role": "user", "content": SORT}],
                                                seed=0)
    assert r.choices[0].message.content == cli["text"] == "1 3 4 7 9"
    assert r.choices[0].finish_reason == "stop" and r.object == "chat.completion"
    assert r.usage.prompt_tokens == cli["prompt_tokens"]
    assert r.usage.completion_tokens == cli["generated_tokens"]
    assert r.usage.total_tokens == cli["prompt_tokens"] + cli["generated_tokens"]
    assert r.model_extra["dlm"]["nfe"] == cli["nfe"] and r.model_extra["dlm"]["profile"] == "speedy"


def test_completions_send_raw_text_like_no_chat_template(served_ar):
    cli = generate_json("-m", "dlm-demo-ar", "--draft", "dlm-demo-ar-draft", "--no-chat-template", REVERSE)
    r = served_ar.client().completions.create(model="dlm-demo-ar", prompt=REVERSE, seed=0)
    assert r.choices[0].text == cli["text"]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (cli["prompt_tokens"], cli["generated_tokens"])
    chat = generate_json("-m", "dlm-demo-ar", "--draft", "dlm-demo-ar-draft", REVERSE)
    assert chat["prompt_tokens"] != cli["prompt_tokens"]  # the chat template is what the raw prompt lacks


def test_streamed_deltas_add_up_to_the_answer_and_usage_comes_last(served):
    cli = generate_json("-m", "dlm-demo", "-p", "quality", "-n", "24", SORT)
    stream = served.client().chat.completions.create(
        model="dlm-demo", messages=[{"role": "user", "content": SORT}], seed=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True}, extra_body={"profile": "quality"})
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == cli["text"] and len(deltas) > 1  # one token per step: the text arrives in pieces
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == cli["generated_tokens"]
    assert chunks[-1].model_extra["dlm"]["nfe"] == cli["nfe"] == 24


def test_streamed_completion_from_the_speculative_pair(served_ar):
    cli = generate_json("-m", "dlm-demo-ar", "--draft", "dlm-demo-ar-draft", "--no-chat-template", REVERSE)
    pieces = [c.choices[0].text for c in served_ar.client().completions.create(
        model="dlm-demo-ar", prompt=REVERSE, seed=0, stream=True) if c.choices]
    assert "".join(pieces) == cli["text"]


def test_stop_strings_cut_the_answer_streamed_or_not(served):
    client = served.client()
    msgs = [{"role": "user", "content": SORT}]
    r = client.chat.completions.create(model="dlm-demo", messages=msgs, seed=0, stop=[" 7", "xyz"])
    assert r.choices[0].message.content == "1 3 4" and r.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="dlm-demo", messages=msgs, seed=0, stop=" 7", stream=True,
                                              max_tokens=16, extra_body={"profile": "quality"})
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "1 3 4"


def test_a_conversation_renders_every_turn(served, dllm):
    from dlm_cli.controltokens import encode_messages

    msgs = [{"role": "user", "content": "Copy: 1 2"}, {"role": "assistant", "content": "1 2"},
            {"role": "user", "content": SORT}]
    r = served.client().chat.completions.create(model="dlm-demo", messages=msgs, seed=0)
    assert r.usage.prompt_tokens == len(encode_messages(dllm.tokenizer, msgs)) > 30


# -- the dlm_steps stream ------------------------------------------------------------------------

def test_dlm_steps_carry_every_event_between_the_openai_chunks(served):
    blocks = sse_blocks(served.url + "/v1/chat/completions", {
        "messages": [{"role": "user", "content": SORT}], "seed": 0, "max_tokens": 16, "stream": True,
        "profile": "quality", "dlm_steps": True})
    assert blocks[-1] == (None, "[DONE]")
    steps = [json.loads(d) for name, d in blocks if name == "dlm_step"]
    assert [e["event"] for e in steps] == ["Start"] + ["Step"] * 16 + ["Done"]
    assert steps[0]["length"] == 16 and all(e["choices"] == [] and e["object"] == "dlm.step" for e in steps)
    assert [e["nfe"] for e in steps[1:-1]] == list(range(1, 17))
    filled = sorted(p for e in steps[1:-1] for p in e["positions"])
    assert filled == list(range(16))  # every slot unmasked exactly once
    pieces = {int(k): v for e in steps for k, v in e["pieces"].items()}
    text = "".join(pieces[t] for t in steps[-1]["tokens"])
    deltas = [json.loads(d)["choices"][0]["delta"].get("content", "") for name, d in blocks[:-1] if name is None]
    assert "".join(deltas) == text == "1 3 4 7 9"


def test_dlm_steps_of_the_ar_pair_show_drafts_and_verdicts(served_ar):
    blocks = sse_blocks(served_ar.url + "/v1/completions", {"prompt": REVERSE, "seed": 0, "stream": True,
                                                             "dlm_steps": True})
    kinds = [json.loads(d)["event"] for name, d in blocks if name == "dlm_step"]
    assert kinds[0] == "Start" and kinds[-1] == "Done" and "Draft" in kinds and "Verify" in kinds


def test_an_openai_client_reading_a_dlm_steps_stream_still_gets_the_text(served):
    stream = served.client().chat.completions.create(
        model="dlm-demo", messages=[{"role": "user", "content": SORT}], seed=0, stream=True,
        extra_body={"dlm_steps": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "1 3 4 7 9"
    assert {c.object for c in chunks} == {"chat.completion.chunk", "dlm.step"}


# -- refusals ------------------------------------------------------------------------------------

def test_a_bad_set_key_gets_400_with_the_line_the_cli_prints(served):
    cli = CliRunner().invoke(cli_app, ["generate", "-m", "dlm-demo", "--set", "bogus=1", SORT])
    assert cli.exit_code == 2
    with pytest.raises(openai.BadRequestError) as exc:
        served.client().chat.completions.create(model="dlm-demo", messages=[{"role": "user", "content": SORT}],
                                                extra_body={"set": ["bogus=1"]})
    assert exc.value.status_code == 400
    assert "dlm: " + exc.value.body["message"] == cli.stderr.strip()


@pytest.mark.parametrize("extra, fragment", [
    ({"profile": "nosuch"}, "unknown profile 'nosuch'"),
    ({"profile": "../etc/x.toml"}, "files are not read on a client's behalf"),
    ({"profile": "ar"}, "strategy 'ar' needs an autoregressive"),
    ({"n": 2}, "n = 2 is not supported"),
    ({"max_tokens": 600}, "context is 512 tokens; lower max_tokens"),
    # The run session's check the CLI makes: past the toy's trained canvas it would answer nothing.
    ({"max_tokens": 100}, "trained to fill canvases of up to 64 slots, and with max_tokens 100"),
    ({"temperature": -1}, "temperature = -1 must be >= 0"),
])
def test_requests_dlm_cannot_answer_get_400_saying_why(served, extra, fragment):
    with pytest.raises(openai.BadRequestError) as exc:
        served.client().chat.completions.create(model="dlm-demo", messages=[{"role": "user", "content": SORT}],
                                                extra_body=extra)
    assert fragment in exc.value.body["message"]


def test_another_model_name_is_404_and_a_non_json_body_415(served):
    with pytest.raises(openai.NotFoundError):
        served.client().completions.create(model="gpt-4", prompt=SORT)
    req = urllib.request.Request(served.url + "/v1/completions", data=b'{"prompt": "x"}',
                                 headers={"Content-Type": "text/plain"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 415


def test_an_api_key_is_required_as_a_bearer_token(dllm):
    s = Running(dllm, profile="speedy", api_key="sekrit")
    try:
        msgs = [{"role": "user", "content": SORT}]
        for key in ("wrong", "sekrit2"):
            with pytest.raises(openai.AuthenticationError) as exc:
                s.client(api_key=key).chat.completions.create(model="dlm-demo", messages=msgs)
            assert exc.value.status_code == 401 and "API key" in exc.value.body["message"]
        ok = s.client(api_key="sekrit").chat.completions.create(model="dlm-demo", messages=msgs, seed=0)
        assert ok.choices[0].message.content == "1 3 4 7 9"
        with urllib.request.urlopen(s.url + "/", timeout=10) as page:  # the page holds no secret: it asks for the key
            assert page.status == 200 and b'id="api_key"' in page.read()
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(s.url + "/v1/models", timeout=10)
        assert exc.value.code == 401
    finally:
        s.stop()


def test_a_full_queue_answers_503_and_a_disconnect_stops_the_decode(long_dllm):
    s = Running(long_dllm, profile="quality", queue_size=1)
    try:
        client = s.client()
        msgs = [{"role": "user", "content": SORT}]
        running = client.chat.completions.create(model="dlm-demo-long", messages=msgs, max_tokens=LONG, stream=True,
                                                 extra_body={"dlm_steps": True})
        next(iter(running))  # its decode has started
        waiting = threading.Thread(target=lambda: client.chat.completions.create(
            model="dlm-demo-long", messages=msgs, max_tokens=8, seed=0))
        waiting.start()
        s.wait(lambda st: st["waiting"] == 1 and st["busy"], "the second request to wait")
        with pytest.raises(openai.InternalServerError) as exc:
            client.chat.completions.create(model="dlm-demo-long", messages=msgs, max_tokens=8)
        assert exc.value.status_code == 503 and "queue size 1" in exc.value.body["message"]
        assert s.status()["rejected"] == 1
        running.close()  # the client leaves mid-stream
        waiting.join(timeout=60)
        st = s.wait(lambda st: st["served"] == 1, "the waiting request to be served")
        assert st["cancelled"] == 1 and st["last"]["outcome"] == "served" and st["last"]["steps"] == 8
    finally:
        s.stop()


def test_a_disconnect_stops_decoding_at_the_next_step(long_dllm):
    s = Running(long_dllm, profile="quality")
    try:
        stream = s.client().chat.completions.create(model="dlm-demo-long", messages=[{"role": "user", "content": SORT}],
                                                    max_tokens=LONG, stream=True, extra_body={"dlm_steps": True})
        it = iter(stream)
        for _ in range(3):
            next(it)
        stream.close()
        st = s.wait(lambda st: st["cancelled"] == 1 and not st["busy"], "the decode to stop")
        assert st["last"]["outcome"] == "cancelled" and 0 < st["last"]["steps"] < LONG // 2, st
        assert st["served"] == 0
    finally:
        s.stop()


# -- the command ---------------------------------------------------------------------------------

def one_line_error(result, code, fragment):
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlm: ") and fragment in lines[0], result.stderr


def test_serve_help_states_the_limits():
    r = CliRunner().invoke(cli_app, ["serve", "--help"])
    text = " ".join(r.stdout.split())
    assert r.exit_code == 0 and "batch size 1 unless --max-batch" in text and "--queue-size" in text and "503" in text


def error_of(result) -> tuple[int, list[str]]:
    """The exit code and the stderr lines of a CLI run."""
    return result.exit_code, result.stderr.strip().splitlines()


def test_serve_refuses_a_public_host_without_a_key_and_a_taken_port():
    runner = CliRunner()
    code, lines = error_of(runner.invoke(cli_app, ["serve", "--host", "0.0.0.0"]))
    assert code == 2 and len(lines) == 1 and lines[0].startswith("dlm: ") and "pass --api-key" in lines[0], lines
    code, lines = error_of(runner.invoke(cli_app, ["serve", "--api-key", " "]))
    assert code == 2 and len(lines) == 1 and "--api-key is empty" in lines[0], lines
    code, lines = error_of(runner.invoke(cli_app, ["serve", "-p", "nosuch"]))
    assert code == 2 and len(lines) == 1 and "unknown profile 'nosuch'" in lines[0], lines
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = error_of(runner.invoke(cli_app, ["serve", "-m", "dlm-demo", "--port", str(port)]))
        assert code == 1 and len(lines) == 1, lines
        assert lines[0].startswith(f"dlm: cannot listen on 127.0.0.1:{port}: Address already in use"), lines
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    code, lines = error_of(runner.invoke(cli_app, ["serve", "-m", "nosuch", "--port", str(port)]))
    assert code == 2 and len(lines) == 1 and "unknown model 'nosuch'" in lines[0], lines


# -- the browser view ----------------------------------------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")


@pytest.fixture
def browser(tmp_path):
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver; .ci/run does it)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    yield driver
    driver.quit()


def test_the_page_shows_the_masks_filling_in(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cli = generate_json("-m", "dlm-demo", "-p", "quality", "-n", "24", SORT)
    browser.get(served.url + "/")
    WebDriverWait(browser, 30).until(lambda d: "dlm-demo" in d.find_element(By.ID, "model").text)
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(SORT)
    browser.find_element(By.ID, "profile").send_keys("quality")
    browser.find_element(By.ID, "max_tokens").send_keys("24")
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                     in ("done", "error"))
    assert browser.find_element(By.ID, "error").text == ""
    assert browser.find_element(By.ID, "text").text == cli["text"]  # the greedy answer, seed or not
    frames = browser.execute_script("return window.dlmFrames")
    assert frames[0] == {"masks": 24, "committed": 0}  # the Start frame: all masked
    assert any(0 < f["masks"] < 24 for f in frames)  # masks filling in, one slot per step
    assert frames[-1]["masks"] == 0 and len(frames) == 26  # Start, 24 steps, Done
    colours = browser.execute_script(
        "return [...document.querySelectorAll('#canvas span')].map(s => s.style.color).filter(Boolean)")
    assert len(colours) >= 5  # committed tokens are drawn in their confidence colour
    assert "24 NFE" in browser.find_element(By.ID, "counter").text
    # One counting rule: tokens up to the first end token, as the stats line (not the 24 slots filled).
    assert f"{cli['generated_tokens']} committed · 24 slots" in browser.find_element(By.ID, "counter").text
    assert f"{cli['tokens_per_nfe']:.2f} tok/NFE" in browser.find_element(By.ID, "counter").text


def test_a_bounded_load_loses_nothing(dllm):
    """Four clients, 40 requests, a queue of 1: each gets its full greedy answer or a 503 saying the queue is full."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from serve_load import run_load

    s = Running(dllm, profile="speedy", queue_size=1)
    try:
        out = run_load(s.url, "dlm-demo", clients=4, requests=40, deadline=60, prompts=[SORT, REVERSE])
        assert out.wrong == [] and out.errors == []
        assert out.sent == 40 and out.ok + out.busy == 40 and out.ok > 0
        st = s.status()
        assert st["rejected"] == out.busy and st["served"] == out.ok + 4  # + the four expected answers
    finally:
        s.stop()


@pytest.mark.parametrize("ignored", [False, True], ids=["ctrl-c", "sigint-ignored"])
def test_the_command_serves_until_ctrl_c(tmp_path, ignored):
    """The real `dlm serve` process: its start line names the address, it answers, and Ctrl-C ends it with 130.

    Also when it starts with SIGINT ignored, as a script's background job does: uvicorn still stops on
    the signal, and dlm must still end with 130, not 0.
    """
    import os
    import signal
    import subprocess

    def ignore() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-m", "dlm_cli", "serve", "-m", "dlm-demo", "--port", "0", "--threads",
                             "1", "--queue-size", "3"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=ignore if ignored else None,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    try:
        line = proc.stderr.readline()
        assert line.startswith("dlm serve: dlm-demo (profile speedy) on http://127.0.0.1:") and "queue 3" in line, line
        url = line.split(" on ", 1)[1].split("/ ", 1)[0]
        with urllib.request.urlopen(url + "/v1/models", timeout=30) as r:
            assert json.load(r)["data"][0]["id"] == "dlm-demo"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert proc.stderr.read().strip() == "dlm: interrupted"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_pages_default_prompt_fits_the_served_model(served, llada_model):
    def page(url: str) -> str:
        with urllib.request.urlopen(url + "/", timeout=10) as r:
            return r.read().decode()

    assert ">Sort these numbers: 4 7 1 9 3</textarea>" in page(served.url)  # the toy knows its tasks only
    s = Running(llada_model, profile="speedy")  # any other model: a chat question
    try:
        html = page(s.url)
    finally:
        s.stop()
    assert ">Explain the water cycle in simple terms.</textarea>" in html and "Sort these" not in html
