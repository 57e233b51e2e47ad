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
