"""Build a server from a model name and run it with uvicorn, in the foreground or in a background thread.

    app = build_app("tiny-target", ServeConfig(), keys=ApiKeys({"sk-test-0001": 600}))
    with ServerThread(app, port=0) as server:        # a real uvicorn on 127.0.0.1, a free port
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test-0001")

``ServerThread.stop()`` asks uvicorn to exit as SIGTERM would: it stops accepting connections, lets the
responses in flight finish, then the app's lifespan drains the engine (graceful shutdown).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from mlcore.serve.audit_log import AuditLog
from mlcore.serve.config import ServeConfig
from mlcore.serve.engine import Engine
from mlcore.serve.security import ApiKeys

TINY = ("tiny-target", "tiny-draft")


def load_model(name: str) -> tuple[Any, Any, int | list[int] | None]:
    """(model, tokenizer, eos id) for "tiny-target" / "tiny-draft" or an HF folder holding ``tokenizer.bpe``."""
    from mlcore.training.assets import load_tiny, load_tiny_tokenizer

    if name in TINY:
        model, tok = load_tiny(name.split("-")[1])
        return model, tok, 4095
    folder = Path(name)
    if not folder.is_dir():
        raise ValueError(f"--model must be one of {TINY} or a model folder, got {name!r} (no such folder)")
    from mlcore.model import Transformer

    tok_dir = folder if (folder / "tokenizer.bpe").exists() else folder.parent
    tok = load_tiny_tokenizer(tok_dir)
    return Transformer.from_pretrained(folder).eval(), tok, folder_eos(folder, tok)


def folder_eos(folder: Path, tok: Any) -> int | list[int] | None:
    """The end-of-text id(s) of a model folder: ``generation_config.json``, then ``config.json`` (HF's order),
    then the tokenizer's ``<|endoftext|>``. Without one the server would generate past the end of the text."""
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.exists():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if eos is not None:
                return eos
    return getattr(tok, "special_tokens", {}).get("<|endoftext|>")


def build_app(model_name: str, config: ServeConfig | None = None, *, keys: ApiKeys | None = None,
              audit: AuditLog | None = None) -> FastAPI:
    from mlcore.serve.app import create_app

    config = config or ServeConfig(model_name=model_name)
    model, tok, eos = load_model(model_name)
    engine = Engine(model, config.engine)
    return create_app(engine, tok, config, keys=keys, audit=audit, eos_token_id=eos)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving ``app`` in a daemon thread (tests, notebooks); a context manager."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, ssl_certfile: str | None = None,
                 ssl_keyfile: str | None = None, graceful_timeout: float = 30.0) -> None:
        self.host, self.port = host, port or free_port(host)
        self.scheme = "https" if ssl_certfile else "http"
        self.app = app
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", ssl_certfile=ssl_certfile,
                                ssl_keyfile=ssl_keyfile, timeout_graceful_shutdown=graceful_timeout,
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="mlcore-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
