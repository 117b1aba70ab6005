"""The HTTP driver's own logic without a real registry: Bearer token flow, layout checks.

Debian's registry offers only htpasswd (Basic) auth without a JWT-signing
token server, so the Bearer flow (401 challenge -> token endpoint with
service/scope and Basic credentials -> retry with the token) is checked here
against a few lines of ``http.server`` that play registry and token service.
The real registry's Basic auth is covered in tests/integration.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from zerostart.oci import OCI_MANIFEST
from zerostart.registry import client as reg

TOKEN = "tok-123"
USER, PASSWORD = "alice", "wonder"


class _Handler(BaseHTTPRequestHandler):
    token_requests: list[dict[str, Any]]

    def log_message(self, *args: object) -> None:
        pass

    def _send(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        port = self.server.server_address[1]
        if url.path == "/token":
            query = urllib.parse.parse_qs(url.query)
            auth = self.headers.get("Authorization", "")
            self.token_requests.append({"query": query, "auth": auth})
            good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if auth != good:
                self._send(401, {"details": "incorrect username or password"})
                return
            self._send(200, {"token": TOKEN})
            return
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            challenge = (
                f'Bearer realm="http://127.0.0.1:{port}/token",service="fake-registry",'
                'scope="repository:team/model:pull"'
            )
            self._send(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                {"WWW-Authenticate": challenge},
            )
            return
        self._send(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})


@pytest.fixture
def fake_registry() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    requests: list[dict[str, Any]] = []
    handler = type("H", (_Handler,), {"token_requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def test_bearer_flow_fetches_a_scoped_token_with_basic_credentials(
    fake_registry: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    address, token_requests = fake_registry
    # Past auth, the fake answers 404: reaching it proves the token was accepted.
    with pytest.raises(reg.RegistryNotFoundError, match="MANIFEST_UNKNOWN"):
        reg.pull(f"{address}/team/model:1", tmp_path / "out", auth=(USER, PASSWORD), timeout_s=5)
    assert len(token_requests) == 1
    query = token_requests[0]["query"]
    assert query["service"] == ["fake-registry"]
    assert query["scope"] == ["repository:team/model:pull"]
    assert token_requests[0]["auth"].startswith("Basic ")
    assert not (tmp_path / "out" / "index.json").exists()


def test_bearer_flow_with_wrong_password_names_the_token_service(
    fake_registry: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    address, _ = fake_registry
    with pytest.raises(reg.RegistryAuthError) as info:
        reg.pull(f"{address}/team/model:1", tmp_path / "out", auth=(USER, "nope"), timeout_s=5)
    message = str(info.value)
    assert f"registry {address}" in message and "refused a token as 'alice'" in message
    assert "docker login" in message


def test_credentials_come_from_docker_config_when_not_given(
    fake_registry: tuple[str, list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address, token_requests = fake_registry
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {address: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    with pytest.raises(reg.RegistryNotFoundError):
        reg.pull(f"{address}/team/model:1", tmp_path / "out", timeout_s=5)
    assert token_requests[-1]["auth"] == f"Basic {auth}"


def test_push_refuses_a_folder_that_is_not_an_oci_layout(tmp_path: Path) -> None:
    # The layout is read before any connection: port 9 (discard) is never contacted.
    with pytest.raises(reg.ImageLayoutError, match="no oci-layout file"):
        reg.push(tmp_path, "127.0.0.1:9/x:1")


def test_push_names_a_missing_blob(tmp_path: Path) -> None:
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    digest = "sha256:" + "ab" * 32
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": 5}],
    }
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(reg.ImageLayoutError, match=f"blob {digest} missing"):
        reg.push(tmp_path, "127.0.0.1:9/x:1")


def test_bad_reference_is_a_registry_error_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(reg.RegistryError, match="lowercase"):
        reg.pull("127.0.0.1:9/NoCaps:1", tmp_path)


def test_a_blob_file_shorter_than_its_upload_fails_at_once(tmp_path: Path) -> None:
    """Content-Length is sent first: a short body must fail here, not hang the registry."""
    from zerostart.registry._http import FileSlice
    from zerostart.registry.errors import ImageLayoutError

    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * 100)
    sent: list[int] = []
    with FileSlice(blob, 40, 60, sent.append) as body:  # control: exactly to the end
        assert body.read(1000) == b"x" * 60 and body.read(10) == b""
    with (
        FileSlice(blob, 40, 70, sent.append) as body,
        pytest.raises(ImageLayoutError, match="ended 10 bytes before the 70"),
    ):
        body.read(1000)
