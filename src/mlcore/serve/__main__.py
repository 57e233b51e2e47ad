"""``python -m mlcore.serve --model tiny-target|DIR [--host 127.0.0.1] [--port 8000] [--api-keys-file F]
[--ssl-certfile C --ssl-keyfile K]``; keys also from ``MLCORE_API_KEYS=k1,k2`` (each key at least 8 characters). SIGTERM /
Ctrl-C shut down gracefully: no new connections, responses in flight finish, then the engine drains."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from mlcore.serve.config import ServeConfig
from mlcore.serve.engine import EngineConfig
from mlcore.serve.runner import build_app
from mlcore.serve.security import ApiKeys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlcore.serve", description=__doc__)
    p.add_argument("--model", required=True, help="tiny-target, tiny-draft or a model folder")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-keys-file", default=None, help="one key per line: 'key' or 'key requests-per-minute'")
    p.add_argument("--ssl-certfile", default=None)
    p.add_argument("--ssl-keyfile", default=None)
    p.add_argument("--pii-policy", default="mask", choices=("mask", "block", "allow"))
    p.add_argument("--audit-log", default="mlcore-audit.jsonl", help="JSON-lines audit log (PII masked)")
    p.add_argument("--num-blocks", type=int, default=256)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-running", type=int, default=32)
    p.add_argument("--rpm", type=float, default=600.0, help="default requests per minute per key")
    args = p.parse_args(argv)
    try:
        keys = ApiKeys.load(args.api_keys_file, default_rpm=args.rpm)
    except (OSError, ValueError) as err:  # one clear line, never a traceback that could echo a key file
        print(f"cannot load API keys: {err}", file=sys.stderr)
        return 2
    if len(keys) == 0:
        print("no API keys: pass --api-keys-file or set MLCORE_API_KEYS=k1,k2 (there is no open mode)",
              file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.ssl_certfile:
        print(f"warning: serving on {args.host} without TLS; keys and prompts cross the network in clear",
              file=sys.stderr)
    config = ServeConfig(model_name=args.model, host=args.host, port=args.port, pii_policy=args.pii_policy,
                         audit_path=args.audit_log, default_rpm=args.rpm, ssl_certfile=args.ssl_certfile,
                         ssl_keyfile=args.ssl_keyfile,
                         engine=EngineConfig(num_blocks=args.num_blocks, block_size=args.block_size,
                                             max_running=args.max_running))
    app = build_app(args.model, config, keys=keys)
    uvicorn.run(app, host=args.host, port=args.port, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                timeout_graceful_shutdown=30, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
