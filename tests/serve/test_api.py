"""The OpenAI-compatible API against a live uvicorn: the official client, httpx, streaming, usage, and 32
concurrent streamed greedy requests that must each equal mlcore.inference.generate on the request alone."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
import torch

from mlcore.inference import generate

MAIN_KEY = "sk-test-main-0001"

PROMPTS = ["The list type", "A dictionary maps", "Exceptions are raised", "The for statement", "Modules can",
           "Python supports", "A class definition", "The with statement"]
EOS = 4095


def reference(served, prompt: str, max_tokens: int) -> list[int]:
    ids = served.tokenizer.encode_ordinary(prompt)
    out = generate(served.model, torch.tensor([ids]), max_new_tokens=max_tokens, eos_token_id=EOS)[0, len(ids):]
    toks = out.tolist()
    return toks[:toks.index(EOS) + 1] if EOS in toks else toks


def text_of(served, toks: list[int]) -> str:
    return served.tokenizer.decode([t for t in toks if t != EOS])


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key=MAIN_KEY, max_retries=0)


def test_completion_chat_and_usage_with_openai_client(served, client):
    ref = reference(served, "The list type", 10)
    r = client.completions.create(model="tiny-target", prompt="The list type", max_tokens=10, temperature=0)
    assert r.choices[0].text == text_of(served, ref)
    assert r.usage.prompt_tokens == len(served.tokenizer.encode_ordinary("The list type"))
    assert r.usage.completion_tokens == len(ref) and r.usage.total_tokens == r.usage.prompt_tokens + len(ref)
    assert r.choices[0].finish_reason == ("stop" if EOS in ref else "length")
    chat = client.chat.completions.create(model="tiny-target", messages=[
        {"role": "system", "content": "You answer about Python."}, {"role": "user", "content": "What is a tuple?"}],
        max_tokens=8, temperature=0)
    prompt = "system: You answer about Python.\nuser: What is a tuple?\nassistant:"
    assert chat.choices[0].message.content == text_of(served, reference(served, prompt, 8))
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens >= 1
    assert [m.id for m in client.models.list().data] == ["tiny-target"]


def test_streaming_sse_and_stop_string(served, client):
    ref_ids = reference(served, "A dictionary maps", 32)
    ref = text_of(served, ref_ids)
    stream = client.completions.create(model="tiny-target", prompt="A dictionary maps", max_tokens=32,
                                       temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref
    assert chunks[-1].usage.completion_tokens == len(ref_ids)
    chat = client.chat.completions.create(model="tiny-target", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=6, temperature=0, stream=True)
    parts = list(chat)
    assert parts[0].choices[0].delta.role == "assistant" and parts[-1].choices[0].finish_reason is not None
    cut = ref[len(ref) // 2:len(ref) // 2 + 3]
    r = client.completions.create(model="tiny-target", prompt="A dictionary maps", max_tokens=32, temperature=0,
                                  stop=[cut])
    assert r.choices[0].text == ref[:ref.index(cut)] and r.choices[0].finish_reason == "stop"


async def _stream(http: httpx.AsyncClient, body: dict) -> tuple[str, list[str]]:
    text, reasons = [], []
    async with http.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"][0]
                text.append(choice["text"])
                reasons.append(choice["finish_reason"])
    return "".join(text), reasons


def test_32_concurrent_streams_equal_solo_generate_and_no_block_leak(served):
    engine = served.engine
    start = engine.blocks.available
    reqs = [(PROMPTS[i % len(PROMPTS)], 4 + (i * 5) % 21) for i in range(32)]  # 8 prompts, 4-24 tokens

    async def main() -> list[tuple[str, list[str]]]:
        async with httpx.AsyncClient(base_url=served.url, timeout=120,
                                     headers={"Authorization": f"Bearer {MAIN_KEY}"}) as http:
            return await asyncio.gather(*(_stream(http, {"model": "tiny-target", "prompt": p, "max_tokens": n,
                                                         "temperature": 0, "stream": True}) for p, n in reqs))

    steps_before = engine.steps
    results = asyncio.run(main())
    longest = {p: reference(served, p, 24) for p, _ in reqs}  # greedy: the first n tokens of a longer run
    for (p, n), (text, reasons) in zip(reqs, results):
        ref = longest[p][:n]
        assert text == text_of(served, ref), (p, n)
        assert reasons[-1] in ("stop", "length")
    deadline = time.monotonic() + 5
    while engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.blocks.available == start == engine.blocks.num_blocks  # no block leaked
    assert all(r == 0 for r in engine.blocks.refcount)
    assert engine.steps - steps_before < sum(n for _, n in reqs) / 2  # batched: far fewer steps than tokens


def test_health_models_and_metrics(served):
    h = httpx.get(served.url + "/healthz").json()
    assert h["status"] == "ok" and h["num_blocks"] == 192
    text = httpx.get(served.url + "/metrics").text
    for name in ("mlcore_queue_depth", "mlcore_running_sequences", "mlcore_free_blocks",
                 "mlcore_time_to_first_token_seconds_bucket", "mlcore_time_per_output_token_seconds_count",
                 "mlcore_requests_total", "mlcore_guardrail_hits_total"):
        assert name in text, name
    assert httpx.get(served.url + "/v1/models").status_code == 401


def test_tokens_made_after_a_stop_string_are_not_counted(served):
    """The engine may make a few tokens before the abort that follows a stop string reaches it (more under load):
    usage counts the tokens up to the stop, whatever the engine made after. A stub engine makes 5 extra."""
    import threading

    from mlcore.serve.app import create_app
    from mlcore.serve.config import ServeConfig
    from mlcore.serve.runner import ServerThread
    from mlcore.serve.security import ApiKeys

    tok = served.tokenizer
    answer = tok.encode_ordinary(" is a list of things")
    stop_at = next(i for i in range(len(answer)) if "list" in tok.decode(answer[: i + 1]))

    class LateAbortEngine:
        max_seq_len = 256

        def start(self):
            return self

        def shutdown(self, drain=True, timeout=None):
            pass

        def stats(self):
            return {"waiting": 0, "running": 0}

        def abort(self, rid):
            pass  # arrives too late: the loop below has already made its tokens

        def submit(self, ids, params, emit=None, request_id=None):
            def run():
                for t in answer + answer[:5]:
                    emit(t, None)
                emit(None, "length")
            threading.Thread(target=run, daemon=True).start()

    app = create_app(LateAbortEngine(), tok, ServeConfig(), keys=ApiKeys({MAIN_KEY: 1e6}), eos_token_id=EOS)
    server = ServerThread(app).start()
    try:
        for stream in (False, True):
            body = {"model": "tiny-target", "prompt": "The list type", "max_tokens": 40, "stop": ["list"],
                    "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}
            r = httpx.post(server.url + "/v1/completions", json=body, timeout=30,
                           headers={"Authorization": f"Bearer {MAIN_KEY}"})
            assert r.status_code == 200
            if stream:
                chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
                usage = chunks[-1]["usage"]
            else:
                usage = r.json()["usage"]
            assert usage["completion_tokens"] == stop_at + 1, stream
    finally:
        server.stop()


def test_a_client_that_leaves_a_non_streamed_request_frees_its_slot(served):
    """A timed-out (or closed) non-streamed request kept decoding for nobody until max_tokens, holding its slot and
    blocks; now it is aborted as a closed stream is (vLLM's ``with_cancellation``), and the server keeps serving."""
    from mlcore.serve.app import create_app
    from mlcore.serve.audit_log import AuditLog
    from mlcore.serve.config import ServeConfig
    from mlcore.serve.engine import Engine, EngineConfig
    from mlcore.serve.runner import ServerThread
    from mlcore.serve.security import ApiKeys

    engine = Engine(served.model, EngineConfig(num_blocks=32))
    app = create_app(engine, served.tokenizer, ServeConfig(engine=engine.config), keys=ApiKeys({MAIN_KEY: 1e6}),
                     audit=AuditLog(None), eos_token_id=None)  # no end-of-text: it would run all 240 tokens
    body = {"model": "tiny-target", "prompt": "The list type", "max_tokens": 240, "temperature": 0}
    headers = {"Authorization": f"Bearer {MAIN_KEY}"}
    with ServerThread(app) as server:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(server.url + "/v1/completions", json=body, headers=headers, timeout=0.2)
        deadline = time.monotonic() + 1.0
        while engine.stats()["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats()["running"] == 0 and engine.tokens_out < 240
        assert engine.blocks.available == 32
        r = httpx.post(server.url + "/v1/completions", json={**body, "max_tokens": 3}, headers=headers, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
