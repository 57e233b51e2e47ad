"""Edge cases of the OpenAI semantics (FastAPI TestClient, one small app per test, no network): lone surrogates,
a KV pool smaller than the context, out-of-range seeds, deep JSON, settings refused at construction, a failed
engine step, ``logprobs: 0``, model ids with "/", ``usage: null`` chunks, and a folder model's end-of-text."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from mlcore.serve.app import create_app
from mlcore.serve.audit_log import AuditLog
from mlcore.serve.config import ServeConfig
from mlcore.serve.engine import Engine, EngineConfig
from mlcore.serve.runner import load_model
from mlcore.serve.security import ApiKeys

KEY = "sk-test-semantics-01"
H = {"Authorization": f"Bearer {KEY}"}
HJ = {**H, "content-type": "application/json"}
BODY = {"model": "tiny-target", "prompt": "The list type", "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-target")


def make(tiny, audit_path=None, engine=None, **cfg):
    model, tok, eos = tiny
    config = ServeConfig(audit_path=audit_path, engine=engine or EngineConfig(num_blocks=32), **cfg)
    eng = Engine(model, config.engine)
    app = create_app(eng, tok, config, keys=ApiKeys({KEY: 1e6}), audit=AuditLog(audit_path), eos_token_id=eos)
    return app, eng


def events(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def test_lone_surrogate_prompt_is_answered_and_audited(tiny, tmp_path):
    path = tmp_path / "audit.jsonl"
    app, _ = make(tiny, audit_path=path)
    with TestClient(app) as c:
        # valid JSON, but "\ud800" cannot be UTF-8: the tokenizer repairs it, the audit line must still be written
        for body in (b'{"model":"tiny-target","prompt":"abc \\ud800 def","max_tokens":2}',
                     b'{"model":"tiny-target","messages":[{"role":"user","content":"hi \\udc80"}],"max_tokens":2}'):
            url = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
            assert c.post(url, content=body, headers=HJ).status_code == 200
        r = c.post("/v1/completions", content=b'{"model":"tiny-target","prompt":"\\ud800","max_tokens":2,'
                                               b'"stream":true}', headers=HJ)
        assert r.status_code == 200 and events(r.text)[-1] == "[DONE]"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [x["status"] for x in lines] == [200, 200, 200]
    assert lines[0]["prompt"] == "abc \ud800 def"  # written as the JSON escape, read back as the same text


def test_folder_model_stops_at_its_end_of_text(tmp_path):
    from mlcore.serve.runner import folder_eos
    from mlcore.training.assets import tiny_dir

    _, tok, eos = load_model(str(tiny_dir() / "target"))
    assert eos == 4095 == tok.special_tokens["<|endoftext|>"]
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [7, 9]}')
    (tmp_path / "config.json").write_text('{"eos_token_id": 3}')
    assert folder_eos(tmp_path, tok) == [7, 9]  # HF's order: generation_config.json first


def test_request_the_kv_pool_cannot_hold_is_400_naming_the_pool(tiny):
    app, _ = make(tiny, engine=EngineConfig(num_blocks=8, block_size=16))  # 128 tokens < the 256 context
    with TestClient(app) as c:
        r = c.post("/v1/completions", json={**BODY, "max_tokens": 200}, headers=H)
        err = r.json()["error"]
        assert r.status_code == 400 and "pool" in err["message"] and err["code"] == "context_length_exceeded"
        # a chat without max_tokens runs to the end of what the pool holds, not into a refusal
        r = c.post("/v1/chat/completions", json={"model": "tiny-target", "temperature": 0,
                                                 "messages": [{"role": "user", "content": "Hi"}]}, headers=H)
        assert r.status_code == 200


def test_seed_out_of_range_is_400_naming_seed(tiny):
    app, _ = make(tiny)
    with TestClient(app) as c:
        for seed in (2**64, -(2**63) - 1):
            for temperature in (0.7, 0):
                r = c.post("/v1/completions", json={**BODY, "seed": seed, "temperature": temperature}, headers=H)
                assert r.status_code == 400 and "seed" in r.json()["error"]["message"], (seed, temperature)


def test_deeply_nested_json_is_400(tiny):
    app, _ = make(tiny)
    with TestClient(app) as c:
        for body in (b"[" * 20000, b'{"model":"tiny-target","prompt":' + b"[" * 5000 + b"]" * 5000 + b"}"):
            r = c.post("/v1/completions", content=body, headers=HJ)
            assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]


def test_settings_that_break_requests_are_refused_at_construction(tiny):
    for kw, field in (({"max_prompt_tokens": 0}, "max_prompt_tokens"), ({"max_prompt_tokens": -5}, "max_prompt_tokens"),
                      ({"default_max_tokens": 0}, "default_max_tokens"), ({"max_queue": 0}, "max_queue")):
        with pytest.raises(ValueError, match=field):
            ServeConfig(**kw)
    with pytest.raises(ValueError, match="history"):
        EngineConfig(history=-1)
    with pytest.raises(ValueError, match="max_prompt_tokens"):  # longer than the model's context of 256
        make(tiny, max_prompt_tokens=1000)


def test_failed_engine_step_is_a_server_error_never_a_finish_reason(tiny, monkeypatch):
    app, engine = make(tiny)

    def boom(rows):
        raise RuntimeError("simulated device failure")

    with TestClient(app) as c:
        monkeypatch.setattr(engine, "_forward", boom)
        r = c.post("/v1/completions", json=BODY, headers=H)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        r = c.post("/v1/chat/completions", json={"model": "tiny-target", "max_tokens": 3, "stream": True,
                                                 "messages": [{"role": "user", "content": "Hi"}]}, headers=H)
        data = [json.loads(e) for e in events(r.text) if e != "[DONE]"]
        assert data[-1]["error"]["type"] == "server_error"
        assert all(ch["finish_reason"] != "error" for d in data for ch in d.get("choices", []))


def test_logprobs_0_is_refused(tiny):
    app, _ = make(tiny)
    with TestClient(app) as c:
        r = c.post("/v1/completions", json={**BODY, "logprobs": 0}, headers=H)  # 0 still asks for the token's
        assert r.status_code == 400 and "logprobs" in r.json()["error"]["message"]
        assert c.post("/v1/completions", json={**BODY, "logprobs": None}, headers=H).status_code == 200


def test_model_id_with_slash_and_usage_null_on_all_chunks_but_the_last(tiny):
    app, _ = make(tiny, model_name="models/tiny-target")
    body = {**BODY, "model": "models/tiny-target"}
    with TestClient(app) as c:
        r = c.get("/v1/models/models/tiny-target", headers=H)
        assert r.status_code == 200 and r.json()["id"] == "models/tiny-target"
        assert c.get("/v1/models/models/other", headers=H).json()["error"]["code"] == "model_not_found"
        r = c.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}},
                   headers=H)
        chunks = [json.loads(e) for e in events(r.text) if e != "[DONE]"]
        assert all(ch["usage"] is None for ch in chunks[:-1]) and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_tiny_temperature_is_greedy_and_never_fails_the_batch(tiny):
    """temperature 1e-300 is valid OpenAI input (0 to 2); logits / T overflowed float32, the draw raised and the
    failed step ended every request in the batch with a 500. Below 1e-5 the engine samples greedily (as vLLM)."""
    from mlcore.serve.scheduler import SamplingParams

    model, tok, eos = tiny
    engine = Engine(model, EngineConfig(num_blocks=32))
    ids = tok.encode_ordinary("The list type")
    greedy = engine.submit(ids, SamplingParams(max_tokens=6, temperature=0))
    tiny_t = [engine.submit(ids, SamplingParams(max_tokens=6, temperature=t, seed=1)) for t in (1e-300, 1e-45, 1e-6)]
    engine.run_until_done()
    assert engine.last_error is None
    assert all(s.output == greedy.output and s.finish_reason == "length" for s in tiny_t)
    app, _ = make(tiny)
    with TestClient(app) as c:
        r = c.post("/v1/completions", json={**BODY, "temperature": 1e-300}, headers=H)
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"


def test_lone_surrogate_echoed_in_an_error_is_still_openai_json(tiny):
    app, _ = make(tiny)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/completions", content=b'{"model":"\\ud800","prompt":"x"}', headers=HJ)
        assert r.status_code == 404 and r.headers["content-type"] == "application/json"
        assert r.json()["error"] == {"message": "model '\ud800' does not exist; this server serves 'tiny-target'",
                                     "type": "invalid_request_error", "param": "model", "code": "model_not_found"}


def test_null_means_the_default_where_openai_declares_the_field_nullable(tiny):
    """The openai client's params types declare these Optional; an explicit null is the default, not a 400."""
    import typing

    from openai.types import completion_create_params as ref

    hints = typing.get_type_hints(ref.CompletionCreateParamsBase)
    nullable = ("temperature", "top_p", "n", "presence_penalty", "frequency_penalty")
    assert all(type(None) in typing.get_args(hints[f]) for f in nullable)
    app, _ = make(tiny)
    with TestClient(app) as c:
        want = c.post("/v1/completions", json=BODY, headers=H).json()["choices"]
        r = c.post("/v1/completions", json={**BODY, **dict.fromkeys(nullable[1:]), "stream": None}, headers=H)
        assert r.status_code == 200 and r.json()["choices"] == want
        r = c.post("/v1/chat/completions", json={"model": "tiny-target", "max_tokens": 2, "temperature": None,
                                                 "messages": [{"role": "user", "content": "Hi"}]}, headers=H)
        assert r.status_code == 200


def test_error_param_names_the_field_as_the_openai_client_reads_it(tiny):
    import openai

    app, _ = make(tiny)
    with TestClient(app) as c:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=c, max_retries=0)
        cases = [({"temperature": 3}, "temperature"), ({"max_token": 5}, "max_token"),
                 ({"presence_penalty": 0.5}, "presence_penalty"), ({"logprobs": 2}, "logprobs"),
                 ({"stream_options": {"include_usage": True}}, "stream_options"), ({"prompt": [1.5]}, "prompt"),
                 ({"max_tokens": 5000}, "max_tokens"), ({"model": "gpt-4"}, "model")]
        for change, param in cases:
            body = {**BODY, **change}
            with pytest.raises(openai.APIStatusError) as info:
                client.completions.create(**{k: body.pop(k) for k in ("model", "prompt")}, extra_body=body)
            assert info.value.param == param and param in info.value.message, (change, info.value.body)


def test_prompt_as_token_ids_equals_generate_and_is_guarded(tiny):
    """OpenAI's prompt may be token ids (a list of ints, or a list holding one): they reach the model as sent, as
    ``generate`` on the same ids; out-of-range ids are a 400 naming prompt; PII in their text is still masked."""
    import openai
    import torch

    from mlcore.inference import generate

    model, tok, eos = tiny
    ids = tok.encode_ordinary("The list type")
    ref = generate(model, torch.tensor([ids]), max_new_tokens=5, eos_token_id=eos)[0, len(ids):].tolist()
    ref = ref[:ref.index(eos) + 1] if eos in ref else ref
    app, _ = make(tiny)
    with TestClient(app) as c:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=c, max_retries=0)
        for prompt in (ids, [ids]):
            r = client.completions.create(model="tiny-target", prompt=prompt, max_tokens=5, temperature=0)
            assert r.choices[0].text == tok.decode([t for t in ref if t != eos])
            assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(ref)
        for bad in ([5, 99999], [-1]):
            with pytest.raises(openai.BadRequestError) as info:
                client.completions.create(model="tiny-target", prompt=bad, max_tokens=2)
            assert info.value.param == "prompt" and "token ids" in info.value.message
        card = tok.encode_ordinary("Refund card 4111 1111 1111 1111 please")
        r = client.completions.create(model="tiny-target", prompt=card, max_tokens=2, temperature=0)
        assert r.usage.prompt_tokens == len(tok.encode_ordinary("Refund card [CARD] please"))


def test_content_parts_and_plain_text_response_format_are_served(tiny):
    """OpenAI takes a message's content as a list of text parts, and ``response_format={"type": "text"}`` /
    ``top_logprobs=0`` ask for nothing beyond plain text: all were refused as malformed. Parts are joined with
    newlines (vLLM's rule), so the answer equals the one for the joined string; other formats are a 400 naming
    the field."""
    import openai

    app, _ = make(tiny)
    msg = {"model": "tiny-target", "max_tokens": 3, "temperature": 0}
    with TestClient(app) as c:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=c, max_retries=0)
        joined = client.chat.completions.create(**msg, messages=[{"role": "user", "content": "The list\ntype"}])
        parts = client.chat.completions.create(
            **msg, response_format={"type": "text"}, extra_body={"top_logprobs": 0},
            messages=[{"role": "user", "content": [{"type": "text", "text": "The list"},
                                                   {"type": "text", "text": "type"}]}])
        assert parts.choices[0].message.content == joined.choices[0].message.content
        assert parts.usage.prompt_tokens == joined.usage.prompt_tokens
        for change, param in [({"response_format": {"type": "json_object"}}, "response_format"),
                              ({"top_logprobs": 2}, "top_logprobs")]:
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(**msg, messages=[{"role": "user", "content": "Hi"}],
                                               extra_body=change)
            assert info.value.status_code == 400 and info.value.param == param
        with pytest.raises(openai.APIStatusError) as info:  # an image part is not served
            client.chat.completions.create(**msg, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])
        assert info.value.status_code == 400


def test_every_answer_of_the_generation_routes_counts_in_requests_total(tiny):
    """mlcore_requests_total counted only 200s, 429s and guardrail 400s: a schema 400, 401, 404 or 413 was missing."""
    app, _ = make(tiny, max_body_bytes=1024)

    def counts(c: TestClient) -> dict[str, float]:
        lines = [line for line in c.get("/metrics").text.splitlines() if line.startswith("mlcore_requests_total{")]
        return {line.split("status=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in lines
                if 'endpoint="/v1/completions"' in line}

    with TestClient(app) as c:
        sent = [c.post("/v1/completions", json=BODY, headers=H),
                c.post("/v1/completions", json={**BODY, "max_tokens": "x"}, headers=H),
                c.post("/v1/completions", json={**BODY, "max_tokens": 10**6}, headers=H),
                c.post("/v1/completions", json={**BODY, "model": "nope"}, headers=H),
                c.post("/v1/completions", json=BODY),
                c.post("/v1/completions", json={**BODY, "prompt": "x" * 2000}, headers=H)]
        assert [r.status_code for r in sent] == [200, 400, 400, 404, 401, 413]
        assert counts(c) == {"200": 1, "400": 2, "404": 1, "401": 1, "413": 1}
        c.get("/v1/models/any-id-at-all", headers=H)  # model ids share one label: clients cannot grow the label set
        assert 'endpoint="/v1/models/{id}",status="404"' in c.get("/metrics").text
