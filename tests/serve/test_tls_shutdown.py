"""TLS with a self-signed certificate (made with ``cryptography``), the "block" PII policy, and graceful shutdown:
requests in flight when the server is told to stop all get their full answer."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time

import httpx
import pytest

KEY = "sk-test-tls-00001"


def self_signed(tmp_path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    from mlcore.serve.config import ServeConfig
    from mlcore.serve.engine import EngineConfig
    from mlcore.serve.runner import ServerThread, build_app
    from mlcore.serve.security import ApiKeys

    tmp = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(tmp)
    config = ServeConfig(pii_policy="block", ssl_certfile=cert, ssl_keyfile=key,
                         engine=EngineConfig(num_blocks=64, block_size=16, max_running=8))
    app = build_app("tiny-target", config, keys=ApiKeys({KEY: 1000}))
    server = ServerThread(app, ssl_certfile=cert, ssl_keyfile=key).start()
    ctx = ssl.create_default_context(cafile=cert)
    yield server, ctx
    server.stop()


def test_tls_round_trip_and_pii_block_policy(tls_server):
    server, ctx = tls_server
    assert server.url.startswith("https://")
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(server.url + "/v1/completions", verify=ctx, headers=headers,
                   json={"model": "tiny-target", "prompt": "The list type", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    r = httpx.post(server.url + "/v1/completions", verify=ctx, headers=headers,
                   json={"model": "tiny-target", "prompt": "pay with 4111 1111 1111 1111", "max_tokens": 3})
    assert r.status_code == 400 and "pii:CARD" in r.json()["error"]["message"]
    with pytest.raises(httpx.ConnectError):  # an unverified certificate is refused by a default client
        httpx.get(server.url + "/healthz")
    plain = server.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not served on the TLS port
        httpx.get(plain + "/healthz", timeout=5)


def test_graceful_shutdown_answers_requests_in_flight(tls_server):
    server, ctx = tls_server
    engine = server.app.state.engine
    results: list[tuple[int, str | None, int]] = []

    def call(i: int) -> None:
        with httpx.stream("POST", server.url + "/v1/completions", verify=ctx, timeout=60,
                          headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "tiny-target", "prompt": f"Item {i}: the list", "max_tokens": 48,
                                "temperature": 0, "stream": True,
                                "stream_options": {"include_usage": True}}) as resp:
            reason, tokens = None, 0
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    body = json.loads(line[6:])
                    if body["choices"]:
                        reason = body["choices"][0]["finish_reason"] or reason
                    if body.get("usage"):
                        tokens = body["usage"]["completion_tokens"]
            results.append((resp.status_code, reason, tokens))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while engine.stats()["running"] + engine.stats()["waiting"] < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.stats()["running"] + engine.stats()["waiting"] > 0, "nothing was in flight"
    server.stop()  # as SIGTERM: stop accepting, finish responses in flight, then drain the engine
    for t in threads:
        t.join(60)
    assert len(results) == 4
    assert all(code == 200 and reason in ("length", "stop") and n >= 1 for code, reason, n in results), results
    assert not server.thread.is_alive() and engine.blocks.available == 64
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz", verify=ctx)
