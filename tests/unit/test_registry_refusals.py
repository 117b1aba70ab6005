"""The pull refuses a manifest whose bytes do not match what it was asked for or told.

Two independent checks guard a pulled manifest: against the digest in the
reference (``repo@sha256:...``) and against the registry's
``Docker-Content-Digest`` header. A real registry cannot be made to lie in one
of them alone, so a small loopback HTTP server plays a registry here that
serves chosen bytes with a chosen header; each test fails if its check is
removed, and the control case proves the server is a working registry.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from zerostart.registry import client as reg

CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _digest(CONFIG),
            "size": len(CONFIG),
        },
        "layers": [],
    }
).encode()
OTHER = MANIFEST.replace(b'"layers": []', b'"layers": [] ')  # valid JSON, other bytes


class LyingRegistry(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` for every manifest, with ``header`` as Docker-Content-Digest."""

    body = MANIFEST
    header: str | None = None

    def do_GET(self) -> None:
        if self.path == "/v2/":
            self._send(200, b"{}", "application/json", None)
        elif "/manifests/" in self.path:
            ctype = "application/vnd.oci.image.manifest.v1+json"
            self._send(200, type(self).body, ctype, type(self).header)
        elif self.path.endswith(_digest(CONFIG)):
            self._send(200, CONFIG, "application/octet-stream", None)
        else:
            self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}', "application/json", None)

    do_HEAD = do_GET

    def _send(self, status: int, body: bytes, ctype: str, digest: str | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[LyingRegistry]]:
    handler = type("Handler", (LyingRegistry,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.address = f"127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_control_an_honest_registry_is_pulled(
    registry: type[LyingRegistry], tmp_path: Path
) -> None:
    registry.header = _digest(MANIFEST)
    ref = f"{registry.address}/r/img@{_digest(MANIFEST)}"  # type: ignore[attr-defined]
    reg.pull(ref, tmp_path / "out")
    assert (tmp_path / "out" / "blobs" / "sha256" / _digest(MANIFEST)[7:]).read_bytes() == MANIFEST


def test_manifest_not_matching_the_reference_digest_is_refused(
    registry: type[LyingRegistry], tmp_path: Path
) -> None:
    registry.body, registry.header = OTHER, None  # no header: only the reference can tell
    ref = f"{registry.address}/r/img@{_digest(MANIFEST)}"  # type: ignore[attr-defined]
    with pytest.raises(reg.DigestMismatchError, match="the reference says") as info:
        reg.pull(ref, tmp_path / "out")
    assert _digest(MANIFEST) in str(info.value) and _digest(OTHER) in str(info.value)
    assert not (tmp_path / "out" / "index.json").exists()


def test_manifest_not_matching_docker_content_digest_is_refused(
    registry: type[LyingRegistry], tmp_path: Path
) -> None:
    registry.body, registry.header = OTHER, _digest(MANIFEST)  # pulled by tag: only the header
    ref = f"{registry.address}/r/img:1"  # type: ignore[attr-defined]
    with pytest.raises(reg.DigestMismatchError, match="the registry says") as info:
        reg.pull(ref, tmp_path / "out")
    assert _digest(OTHER) in str(info.value)
    assert not (tmp_path / "out" / "index.json").exists()
