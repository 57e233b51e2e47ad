"""One real uvicorn server (tiny target, 127.0.0.1, a free port) shared by the serve tests of a session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:  # the [serve] extra; the engine tests need none of it
    import fastapi  # noqa: F401
    import httpx  # noqa: F401
    import openai  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError:
    collect_ignore = ["test_api.py", "test_security.py", "test_tls_shutdown.py"]

MAIN_KEY = "sk-test-main-0001"
SLOW_KEY = "sk-test-slow-0001"  # 2 requests per minute


@dataclass
class Served:
    url: str
    app: object
    engine: object
    tokenizer: object
    model: object
    audit_path: Path
    server: object


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory):
    from mlcore.serve.app import create_app
    from mlcore.serve.audit_log import AuditLog
    from mlcore.serve.config import ServeConfig
    from mlcore.serve.engine import Engine, EngineConfig
    from mlcore.serve.runner import ServerThread, load_model
    from mlcore.serve.security import ApiKeys

    audit_path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    config = ServeConfig(max_body_bytes=16 * 1024, pii_policy="mask", audit_path=str(audit_path),
                         engine=EngineConfig(num_blocks=192, block_size=16, max_running=32, max_step_tokens=512))
    model, tok, eos = load_model("tiny-target")
    engine = Engine(model, config.engine)
    keys = ApiKeys({MAIN_KEY: 1e6, SLOW_KEY: 2})
    app = create_app(engine, tok, config, keys=keys, audit=AuditLog(audit_path), eos_token_id=eos)
    server = ServerThread(app).start()
    yield Served(server.url, app, engine, tok, model, audit_path, server)
    server.stop()
