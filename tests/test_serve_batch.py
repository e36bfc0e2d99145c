"""``dlm serve --max-batch N``: concurrent requests decode as rows of one batch (decode/batch.py's BatchEngine),
through the real openai client; every greedy answer equals batch 1's."""

from __future__ import annotations

import json
import threading

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from batching import Forwards  # noqa: E402
from test_serve import LONG, SORT, Running, sse_blocks  # noqa: E402

PROMPTS = ["Sort these numbers: 4 7 1 9 3", "Reverse: 12 7 33 5", "Copy: 8 41 3 77", "Add: 35 + 47",
           "Sort these numbers: 8 2 6", "Reverse: 1 2 3 4 5 6 7 8", "Copy: 5 5 3 1 9 9", "Add: 3 + 4"]
# Per request: the extra body and max_tokens. Rules and lengths differ; "speedy" (its dual cache) cannot join
# the batch, which runs without one: it waits for the batch to empty and decodes alone.
EXTRA = [({}, 32), ({}, 24), ({"profile": "speedy", "set": ["cache=none"]}, 32), ({}, 40),
         ({"profile": "speedy"}, 32), ({"set": ["steps=16"]}, 32), ({}, 16), ({"set": ["block_length=8"]}, 32)]


@pytest.fixture(scope="module")
def dllm():
    from dlm_cli.models.loading import load

    return load("dlm-demo")


def ask(client, i, steps=False):
    extra, n = EXTRA[i]
    r = client.chat.completions.create(model="dlm-demo", messages=[{"role": "user", "content": PROMPTS[i]}], seed=0,
                                       max_tokens=n, extra_body=extra)
    return r.choices[0].message.content, r.usage.completion_tokens, r.model_extra["dlm"]["nfe"]


def answers_at(server, order):
    """Every request of ``order`` sent at once from its own thread; the answers by request."""
    out, errors = {}, []
    client = server.client(timeout=120)

    def one(i):
        try:
            out[i] = ask(client, i)
        except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
            errors.append(f"{i}: {exc!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    return out


def test_eight_concurrent_requests_at_max_batch_8_get_batch_1s_answers(dllm):
    one = Running(dllm, profile="quality")
    try:
        want = {i: ask(one.client(), i) for i in range(len(PROMPTS))}
    finally:
        one.stop()
    assert want[0][0] == "1 3 4 7 9" and len({w[0] for w in want.values()}) >= 6
    s = Running(dllm, profile="quality", max_batch=8)
    count = Forwards(dllm)
    try:
        got = answers_at(s, range(len(PROMPTS)))
        st = s.status()
    finally:
        count.close()
        s.stop()
    assert got == want  # texts, token counts and each row's own NFE
    assert st["batch_size"] == 8 and st["served"] == 8 and st["failed"] == 0
    assert max(count.sizes) >= 4  # the requests really decoded as rows of one batch
    assert len(count.sizes) < sum(w[2] for w in want.values())  # fewer forwards than the rows' steps


def test_a_batched_rows_step_stream_is_its_own(dllm):
    s = Running(dllm, profile="quality", max_batch=4)
    try:
        others = threading.Thread(target=answers_at, args=(s, [1, 3, 6]))
        others.start()
        blocks = sse_blocks(s.url + "/v1/chat/completions", {
            "messages": [{"role": "user", "content": SORT}], "seed": 0, "max_tokens": 16, "stream": True,
            "dlm_steps": True})
        others.join(120)
    finally:
        s.stop()
    steps = [json.loads(d) for name, d in blocks if name == "dlm_step"]
    assert [e["event"] for e in steps] == ["Start"] + ["Step"] * 16 + ["Done"]
    assert [e["nfe"] for e in steps[1:-1]] == list(range(1, 17))
    assert sorted(p for e in steps[1:-1] for p in e["positions"]) == list(range(16))
    deltas = [json.loads(d)["choices"][0]["delta"].get("content", "") for name, d in blocks[:-1] if name is None]
    assert "".join(deltas) == "1 3 4 7 9"


def test_a_cancelled_row_leaves_the_others_untouched_and_a_full_queue_answers_503():
    from dlm_cli.models.loading import load

    model = load("dlm-demo-long")
    msgs = [{"role": "user", "content": SORT}]
    one = Running(model, profile="quality")
    try:
        want = [one.client().chat.completions.create(model="dlm-demo-long", messages=[{"role": "user", "content": p}],
                                                     seed=0, max_tokens=n).choices[0].message.content
                for p, n in ((PROMPTS[1], LONG), (PROMPTS[2], 24))]
    finally:
        one.stop()
    s = Running(model, profile="quality", max_batch=2, queue_size=1)
    try:
        client = s.client(timeout=120)
        leaving = client.chat.completions.create(model="dlm-demo-long", messages=msgs, max_tokens=LONG, stream=True,
                                                 extra_body={"dlm_steps": True})
        it = iter(leaving)
        next(it)
        got = {}

        def send(k, prompt, n):
            got[k] = client.chat.completions.create(model="dlm-demo-long", messages=[{"role": "user", "content": prompt}],
                                                    seed=0, max_tokens=n).choices[0].message.content

        staying = threading.Thread(target=send, args=(0, PROMPTS[1], LONG))
        staying.start()
        s.wait(lambda st: st["running"] == 2, "two rows to decode together")
        waiting = threading.Thread(target=send, args=(1, PROMPTS[2], 24))
        waiting.start()
        s.wait(lambda st: st["waiting"] == 1, "the third request to wait")
        with pytest.raises(openai.InternalServerError) as exc:
            client.chat.completions.create(model="dlm-demo-long", messages=msgs, max_tokens=8)
        assert exc.value.status_code == 503 and "batch size 2, queue size 1" in exc.value.body["message"]
        for _ in range(3):
            next(it)
        leaving.close()  # the client leaves mid-stream: only its row stops
        staying.join(120)
        waiting.join(120)
        st = s.status()
    finally:
        s.stop()
    assert [got[0], got[1]] == want
    assert (st["served"], st["cancelled"], st["rejected"], st["failed"]) == (2, 1, 1, 0)


def test_a_profile_the_batch_cannot_run_is_served_at_batch_1_with_a_note(dllm):
    s = Running(dllm, profile="elastic", max_batch=8)  # Elastic-Cache refreshes inside a block: not batched
    try:
        assert s.engine.max_batch == 1 and s.status()["batch_size"] == 1
        assert "--max-batch 8" in s.engine.note and "elastic_threshold=0" in s.engine.note
        assert "batch size 1" in s.engine.note and "--set" not in s.engine.note.split("(")[-1]
        assert ask(s.client(), 0)[0] == "1 3 4 7 9"
    finally:
        s.stop()


def test_an_ar_model_serves_concurrent_requests_as_one_batch_with_batch_1s_answers():
    from dlm_cli.models.loading import load

    ar = load("dlm-demo-ar")
    order = [0, 1, 2, 3, 4, 5, 6, 7]

    def ask_ar(client, i):
        r = client.chat.completions.create(model="dlm-demo-ar", messages=[{"role": "user", "content": PROMPTS[i]}],
                                           seed=0, max_tokens=24)
        return r.choices[0].message.content, r.usage.completion_tokens, r.model_extra["dlm"]["nfe"]

    one = Running(ar, profile="lookup")
    try:
        want = {i: ask_ar(one.client(), i) for i in order}
    finally:
        one.stop()
    s = Running(ar, profile="lookup", max_batch=8)
    sizes: list[int] = []
    handle = ar.net.register_forward_pre_hook(lambda m, a, kw: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True)
    out, errors = {}, []
    client = s.client(timeout=120)

    def one_request(i):
        try:
            out[i] = ask_ar(client, i)
        except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
            errors.append(f"{i}: {exc!r}")

    try:
        threads = [threading.Thread(target=one_request, args=(i,)) for i in order]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        st = s.status()
    finally:
        handle.remove()
        s.stop()
    assert errors == [] and out == want  # texts, token counts and each row's own NFE
    assert st["batch_size"] == 8 and st["served"] == 8
    assert max(sizes) >= 3 and len(sizes) < sum(w[2] for w in want.values())
