"""The OpenAI-compatible HTTP API (FastAPI), with keys, limits, guardrails, audit log and metrics in the path.

    POST /v1/completions, POST /v1/chat/completions   (``stream: true`` = server-sent events, ``data: [DONE]``)
    GET /v1/models, GET /v1/models/{id}, GET /healthz, GET /metrics

Every generation request passes, in this order: draining check (503) -> API key (401) -> per-key rate limit
(429) -> body size (413, checked before the body is read in full) -> JSON and schema (400 naming the problem)
-> model name (404) -> input guardrail (400 naming the rule) -> prompt length (400) -> the engine, whose tokens
stream back through the output guardrail (:class:`~mlcore.serve.guard.GuardedText`) -> an audit-log line with
PII masked. Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` so the ``openai``
client raises its usual exceptions.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlcore.serve.audit_log import AuditLog
from mlcore.serve.config import ServeConfig
from mlcore.serve.disconnect import unless_disconnected
from mlcore.serve.engine import Engine
from mlcore.serve.guard import GuardedText, guard_input
from mlcore.serve.metrics import CONTENT_TYPE, Metrics
from mlcore.serve.scheduler import SamplingParams
from mlcore.serve.schemas import ChatRequest, CompletionRequest
from mlcore.serve.security import ApiKeys, RateLimiter


class ApiError(Exception):
    """``param``: the request field at fault (OpenAI's ``error.param``, the ``openai`` client's ``err.param``)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers
        self.param = param
        self.counted = False  # already in mlcore_requests_total (a failed generation counts itself)


def _error_body(err: ApiError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.code}}


def _error(err: ApiError) -> Response:
    # ASCII JSON: a message may echo a client's string, and a lone surrogate ("\ud800" is valid JSON) cannot be
    # encoded as UTF-8, so JSONResponse's ensure_ascii=False made that error a bare 500 "Internal Server Error"
    return Response(json.dumps(_error_body(err)), status_code=err.status, headers=err.headers,
                    media_type="application/json")


def _describe(err: ValidationError, fields: Any) -> tuple[str, str | None]:
    """(message naming each problem, the first field at fault) of a schema error; ``fields``: the model's."""
    parts, params = [], []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if where:
            params.append(str(e["loc"][0]))  # the top-level field, as OpenAI's param (no "prompt.str" union tags)
        elif msg.split(" ", 1)[0] in fields:  # a check across fields: its message starts with the field's name
            params.append(msg.split(" ", 1)[0])
        parts.append(f"unknown field '{where}'" if e["type"] == "extra_forbidden" else f"{where or 'body'}: {msg}")
    return "invalid request: " + "; ".join(parts), params[0] if params else None


def chat_prompt(messages: list[Any]) -> str:
    """The plain chat template of the tiny models: ``role: content`` lines, then ``assistant:``."""
    return "".join(f"{'system' if m.role == 'developer' else m.role}: {m.content}\n" for m in messages) + "assistant:"


def create_app(engine: Engine, tokenizer: Any, config: ServeConfig | None = None, *, keys: ApiKeys | None = None,
               audit: AuditLog | None = None, eos_token_id: int | list[int] | None = None) -> FastAPI:
    """A FastAPI app serving ``engine``. Without ``keys`` every request gets 401 (there is no open mode).
    ``eos_token_id``: the end-of-text id, or a list of them (an HF ``generation_config.json`` may hold one)."""
    config = config or ServeConfig()
    keys = keys if keys is not None else ApiKeys(default_rpm=config.default_rpm)
    audit = audit if audit is not None else AuditLog(config.audit_path)
    metrics = Metrics(engine)
    limiter = RateLimiter()
    if config.max_prompt_tokens is not None and config.max_prompt_tokens >= engine.max_seq_len:
        raise ValueError(f"max_prompt_tokens must be < the model's length {engine.max_seq_len} (room for one "
                         f"token out), got {config.max_prompt_tokens}")
    max_prompt = config.max_prompt_tokens or engine.max_seq_len - 1
    # A request holds at most what both the model's context and the KV pool can: a pool smaller than the
    # context would otherwise make every long request (and every chat without max_tokens) fail in submit().
    pool = getattr(engine, "config", None)  # an engine without a paged pool (a test stub) is bound by its context
    pool_tokens = pool.num_blocks * pool.block_size if pool is not None else engine.max_seq_len
    capacity, limit_name = ((engine.max_seq_len, "the model's context") if engine.max_seq_len <= pool_tokens else
                            (pool_tokens, f"the KV cache pool ({pool.num_blocks} blocks of {pool.block_size})"))
    prompt_limit = min(max_prompt, capacity - 1)  # room for at least one new token
    stop_ids = (tuple(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else
                (eos_token_id,) if eos_token_id is not None else ())
    state = {"draining": False, "inflight": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        state["draining"] = True  # uvicorn has stopped accepting and waited for open responses
        await asyncio.to_thread(engine.shutdown, drain=True)

    app = FastAPI(title="mlcore serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.audit, app.state.metrics, app.state.config = engine, audit, metrics, config
    app.state.serve_state = state

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> Response:
        # every error answer of a route counts (only 429s and guardrail 400s did: a 400, 401, 404, 413 or 503
        # left mlcore_requests_total short); model ids share one label, so clients cannot grow the label set
        if not err.counted:
            path = request.url.path
            metrics.requests.labels("/v1/models/{id}" if path.startswith("/v1/models/") else path,
                                    str(err.status)).inc()
        return _error(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> Response:
        """An unknown route (404) or method (405) in OpenAI's error shape, as every other error."""
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(err.status_code)
        return _error(ApiError(err.status_code, f"{request.method} {request.url.path}: {err.detail}", code=code,
                               headers=getattr(err, "headers", None)))

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "draining" if state["draining"] else "ok", **engine.stats()}

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    def authenticate(request: Request) -> Any:
        if state["draining"]:
            raise ApiError(503, "the server is shutting down", "server_error", "draining")
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        record = keys.check(token)
        if record is None:
            audit.record(event="auth_failed", path=request.url.path, status=401,
                         client=request.client.host if request.client else None)
            raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                           "authentication_error", "invalid_api_key")
        ok, retry = limiter.allow(record)
        if not ok:
            raise ApiError(429, f"rate limit of {record.rpm:g} requests per minute exceeded for this key",
                           "rate_limit_error", "rate_limit_exceeded", {"Retry-After": f"{max(1, round(retry))}"})
        return record

    def model_card() -> dict[str, Any]:
        return {"id": config.model_name, "object": "model", "created": 0, "owned_by": "mlcore"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authenticate(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")  # a model served from a folder is named by its path, "/" and all
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        authenticate(request)
        if model_id != config.model_name:
            raise ApiError(404, f"model '{model_id}' does not exist; this server serves '{config.model_name}'",
                           code="model_not_found")
        return model_card()

    async def read_json(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {config.max_body_bytes}",
                           code="body_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:
                raise ApiError(413, f"request body exceeds the limit of {config.max_body_bytes} bytes",
                               code="body_too_large")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(400, f"malformed JSON body: {err}", code="invalid_json") from None
        except RecursionError:  # a few KB of "[[[[..." is under the size limit but deeper than the parser goes
            raise ApiError(400, "malformed JSON body: nested too deeply", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"the JSON body must be an object, got {type(data).__name__}", code="invalid_json")
        return data

    async def handle(request: Request, chat: bool) -> Response:
        t0 = time.perf_counter()
        record = authenticate(request)
        endpoint = request.url.path
        data = await read_json(request)
        schema = ChatRequest if chat else CompletionRequest
        try:
            req = schema.model_validate(data)
        except ValidationError as err:
            message, param = _describe(err, schema.model_fields)
            raise ApiError(400, message, code="invalid_request", param=param) from None
        if req.model != config.model_name:
            raise ApiError(404, f"model '{req.model}' does not exist; this server serves '{config.model_name}'",
                           code="model_not_found", param="model")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        reasons: list[str] = []
        given_ids: list[int] | None = None  # a completion prompt sent as token ids
        if chat:
            for m in req.messages:
                verdict = guard_input(m.content, pii_policy=config.pii_policy, blocklist=config.blocklist)
                reasons += verdict.reasons
                if not verdict.allowed:
                    break
                m.content = verdict.text
            text = chat_prompt(req.messages) if verdict.allowed else ""
        else:
            one = isinstance(req.prompt, str) or (bool(req.prompt) and isinstance(req.prompt[0], int))  # str / ids
            prompts = [req.prompt] if one else req.prompt
            if len(prompts) != 1:
                raise ApiError(400, f"prompt must be one prompt (batched prompts are not served), got {len(prompts)}",
                               param="prompt")
            given = prompts[0]
            if not isinstance(given, str):  # token ids: checked here (not deep in the engine); the guard reads text
                vocab = getattr(engine, "vocab_size", None)
                out_of_range = [t for t in given if t < 0 or (vocab is not None and t >= vocab)]
                if out_of_range:
                    raise ApiError(400, f"prompt token ids must be in [0, {vocab}), got {out_of_range[0]}",
                                   param="prompt")
                given_ids, given = list(given), tokenizer.decode(list(given))
            verdict = guard_input(given, pii_policy=config.pii_policy, blocklist=config.blocklist)
            reasons, text = verdict.reasons, verdict.text
        metrics.guard("input", reasons)
        if not verdict.allowed:
            audit.record(event="blocked", id=rid, key_id=record.key_id, path=endpoint, status=400,
                         input_guard=reasons, prompt=None)
            raise ApiError(400, verdict.message, code="guardrail_input")
        if given_ids is not None and text == given:  # token ids the guard left alone go to the model as sent
            ids = given_ids
        else:
            ids = tokenizer.encode_ordinary(text) if hasattr(tokenizer, "encode_ordinary") else tokenizer.encode(text)
        if not ids or len(ids) > prompt_limit:
            why = f" ({limit_name} holds {capacity} tokens)" if prompt_limit < max_prompt else ""
            raise ApiError(400, f"prompt has {len(ids)} tokens; it must have 1 to {prompt_limit}{why}",
                           code="context_length_exceeded", param="messages" if chat else "prompt")
        room = capacity - len(ids)
        if req.max_tokens is not None and req.max_tokens > room:  # as OpenAI: refused, not silently clipped
            raise ApiError(400, f"prompt ({len(ids)} tokens) + max_tokens ({req.max_tokens}) exceeds "
                           f"{limit_name}: {capacity} tokens", code="context_length_exceeded", param="max_tokens")
        # without max_tokens: completions stop at OpenAI's legacy default (16), chat runs to the capacity's end
        max_tokens = req.max_tokens or (room if chat else min(config.default_max_tokens, room))
        params = SamplingParams(max_tokens=max_tokens, temperature=req.temperature,
                                top_p=req.top_p if req.top_p < 1 else None, seed=req.seed, stop_token_ids=stop_ids)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()

        def emit(token: int | None, reason: str | None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (token, reason))
            except RuntimeError:
                pass  # the event loop is gone (process exit)

        if engine.stats()["waiting"] >= config.max_queue:
            raise ApiError(503, f"server overloaded: {config.max_queue} requests already waiting; retry later",
                           "server_error", "overloaded", {"Retry-After": "1"})
        try:
            engine.submit(ids, params, emit=emit, request_id=rid)
        except RuntimeError as err:
            raise ApiError(503, str(err), "server_error", "draining") from None
        except ValueError as err:  # a request the engine refuses (checked above; a safety net, not a 500)
            raise ApiError(400, str(err), code="invalid_request") from None
        out = GuardedText(tokenizer.decode, stop=req.stops(), blocklist=config.blocklist)
        created = int(time.time())
        state["inflight"] += 1

        def finish_reason(engine_reason: str | None) -> str:
            if out.blocked:
                return "content_filter"
            if out.stopped or engine_reason == "stop":
                return "stop"
            return "length" if engine_reason == "length" else "stop"  # OpenAI knows no other reason

        async def tokens() -> AsyncIterator[tuple[str, str | None]]:
            """(safe text delta, None) per token, then ("", finish reason)."""
            n, first = 0, None
            reason = None
            try:
                while True:
                    token, reason = await queue.get()
                    if token is None:
                        break
                    if out.stopped or out.blocked:
                        continue  # made before the abort below reached the engine: not part of the answer
                    n += 1
                    first = first or time.perf_counter()
                    if token in stop_ids:
                        continue  # the end-of-text token ends the text; it is not part of it
                    delta = out.feed(token)
                    if out.stopped or out.blocked:
                        engine.abort(rid)
                    if delta:
                        yield delta, None
                if reason == "error":  # the engine step failed: a server error, not a finish reason
                    failed = ApiError(500, f"the server failed while generating this response (request {rid})",
                                      "server_error", "engine_error")
                    failed.counted = True  # by the finally below
                    raise failed
                tail = out.close()
                if tail:
                    yield tail, None
                yield "", finish_reason(reason)
            finally:
                if reason is None:
                    engine.abort(rid)  # the client went away: free the sequence
                state["inflight"] -= 1
                end = time.perf_counter()
                usage["completion_tokens"] = n
                status = 500 if reason == "error" else 200
                # the audit line comes first, so no failure below can skip it
                audit.record(event="completion", id=rid, key_id=record.key_id, path=endpoint, status=status,
                             stream=req.stream, prompt=text, output=out.text, input_guard=reasons,
                             output_guard=out.reasons, prompt_tokens=len(ids), completion_tokens=n,
                             finish_reason="error" if status == 500 else finish_reason(reason) if reason else "abort",
                             latency_s=round(end - t0, 4))
                if first is not None:
                    metrics.ttft.observe(first - t0)
                    if n > 1:
                        metrics.tpot.observe((end - first) / (n - 1))
                metrics.tokens.inc(n)
                metrics.guard("output", out.reasons)
                metrics.requests.labels(endpoint, str(status)).inc()

        usage = {"prompt_tokens": len(ids), "completion_tokens": 0}

        def usage_dict() -> dict[str, int]:
            return {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}

        obj = "chat.completion" if chat else "text_completion"
        if req.stream:
            include_usage = bool((data.get("stream_options") or {}).get("include_usage"))

            def chunk(delta: str, reason: str | None, first: bool) -> dict[str, Any]:
                if chat:
                    d: dict[str, Any] = {"content": delta} if delta else {}
                    if first:
                        d["role"] = "assistant"
                    choice = {"index": 0, "delta": d, "finish_reason": reason}
                else:
                    choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": reason}
                body = {"id": rid, "object": obj + (".chunk" if chat else ""), "created": created,
                        "model": config.model_name, "choices": [choice]}
                if include_usage:  # as OpenAI: "usage": null on every chunk but the last
                    body["usage"] = None
                return body

            async def sse() -> AsyncIterator[str]:
                first = True
                try:
                    async for delta, reason in tokens():
                        yield f"data: {json.dumps(chunk(delta, reason, first))}\n\n"
                        first = False
                except ApiError as err:  # the 200 headers are gone: the error goes as an event, then the stream ends
                    yield f"data: {json.dumps(_error_body(err))}\n\n"
                    return
                if include_usage:
                    body = {"id": rid, "object": obj + (".chunk" if chat else ""), "created": created,
                            "model": config.model_name, "choices": [], "usage": usage_dict()}
                    yield f"data: {json.dumps(body)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store", "X-Request-Id": rid})
        async def collect() -> tuple[str, str | None]:
            parts, reason = [], None
            async for delta, r in tokens():
                parts.append(delta)
                reason = r or reason
            return "".join(parts), reason

        answered, result = await unless_disconnected(request, collect())
        if not answered or result is None:  # the client left (closed, timed out): tokens() aborted the request
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        content, reason = result
        choice = ({"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": reason}
                  if chat else {"index": 0, "text": content, "logprobs": None, "finish_reason": reason})
        return JSONResponse({"id": rid, "object": obj, "created": created, "model": config.model_name,
                             "choices": [choice], "usage": usage_dict()}, headers={"X-Request-Id": rid})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handle(request, chat=True)

    return app
