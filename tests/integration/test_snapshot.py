"""Snapshot and restore of real processes with real CRIU (root; skipped with a reason otherwise).

CRIU comes from scripts/install_criu.sh. Every test snapshots a real HTTP
server, restores it, and checks a real answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zerostart.benchmark import time_cold_start
from zerostart.procs import free_port
from zerostart.snapshot import (
    CorruptSnapshotError,
    IncompatibleSnapshotError,
    Warmup,
    check,
    restore,
    snapshot,
)
from zerostart.snapshot._manifest import IMAGES_DIR, read_manifest, write_manifest
from zerostart.snapshot._process import http_request
from zerostart.snapshot._store import snapshot_dir

pytestmark = [pytest.mark.integration, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]

# A stdlib server whose answer depends on state built before the snapshot:
# ``warm`` counts warm-up calls, so a restored process answers warm=1 while a
# booted one answers warm=0.
SERVER = """\
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
state = {"warm": 0, "ballast": bytearray(os.urandom(1 << 20))}
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def _send(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self._send({"ok": True})
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        data = json.loads(self.rfile.read(n) or b"null")
        if self.path == "/warm":
            state["warm"] += 1
        self._send({"echo": data, "warm": state["warm"], "pid": os.getpid()})
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _criu_usable() -> str | None:
    if os.geteuid() != 0:
        return "CRIU needs root"
    criu = shutil.which("criu", path=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin")
    if criu is None:
        return "criu not installed (run scripts/install_criu.sh)"
    out = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=60, check=False)
    if "Looks good" not in out.stdout + out.stderr:
        return f"criu check fails here: {(out.stdout + out.stderr).strip()[-200:]}"
    return None


_SKIP = _criu_usable()
if _SKIP:
    pytestmark.append(pytest.mark.skip(reason=_SKIP))


@pytest.fixture
def server(tmp_path: Path) -> tuple[list[str], int, Path]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    port = free_port()
    return [sys.executable, str(script), str(port)], port, tmp_path / "store"


def _ask(port: int) -> dict[str, object]:
    status, body = http_request(f"http://127.0.0.1:{port}/ask", "POST", {"q": 1})
    assert status == 200
    return json.loads(body)  # type: ignore[no-any-return]


def _take(server: tuple[list[str], int, Path], name: str = "srv") -> None:
    cmd, port, store = server
    result = snapshot(
        name, cmd, ready_url=f"http://127.0.0.1:{port}/", warmup=Warmup("/warm", {}), store=store
    )
    assert result.size_bytes > 1 << 20  # the 1 MiB ballast is in the pages
    assert result.timings_s["criu_dump"] > 0


def test_restore_twice_answers_from_warmed_state(server: tuple[list[str], int, Path]) -> None:
    _take(server)
    _, port, store = server
    pids = []
    for _ in range(2):
        result = restore("srv", store=store, fallback=False)
        try:
            assert result.mode == "restored" and result.reason is None
            answer = _ask(port)
            assert answer["warm"] == 1 and answer["echo"] == {"q": 1}
            assert answer["pid"] == result.pid
            pids.append(result.pid)
        finally:
            result.stop()
    assert pids[0] == pids[1]  # CRIU gives the process its original PID back


def test_lazy_restore_serves_pages_on_touch_and_answers_the_same(
    server: tuple[list[str], int, Path],
) -> None:
    _take(server)
    _, port, store = server
    result = restore("srv", store=store, fallback=False, lazy_pages=True)
    try:
        assert result.mode == "restored" and result.reason is None
        answer = _ask(port)
        assert answer["warm"] == 1 and answer["echo"] == {"q": 1} and answer["pid"] == result.pid
    finally:
        result.stop()
    logs = list((store / "restores").glob("srv-*/lazy-pages.log"))
    assert len(logs) == 1
    served = [line for line in logs[0].read_text().splitlines() if " pages" in line]
    assert served, "the lazy-pages daemon served no page: the restore was not lazy"


def test_lazy_restore_without_its_daemon_restores_eagerly(
    server: tuple[list[str], int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lazy-pages daemon that cannot start (no userfaultfd, say) costs laziness, not the restore."""
    from zerostart.snapshot import _criu

    _take(server)
    _, port, store = server
    monkeypatch.setattr(_criu, "LAZY_PAGES_SOCKET", "never-appears.socket")
    monkeypatch.setattr(_criu, "LAZY_PAGES_READY_TIMEOUT_S", 0.5)
    result = restore("srv", store=store, fallback=False, lazy_pages=True)
    try:
        assert result.mode == "restored" and _ask(port)["warm"] == 1
    finally:
        result.stop()


def test_second_concurrent_restore_is_refused_with_port_in_use(
    server: tuple[list[str], int, Path],
) -> None:
    _take(server)
    _, port, store = server
    first = restore("srv", store=store, fallback=False)
    try:
        with pytest.raises(Exception, match=f"port {port} is already in use"):
            restore("srv", store=store)
    finally:
        first.stop()


def test_flipped_byte_in_pages_is_refused_then_booted(server: tuple[list[str], int, Path]) -> None:
    _take(server)
    _, port, store = server
    images = snapshot_dir(store, "srv") / IMAGES_DIR
    pages = max(images.glob("pages-*.img"), key=lambda p: p.stat().st_size)
    with open(pages, "r+b") as f:
        f.seek(pages.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(CorruptSnapshotError, match="does not match its sha256"):
        restore("srv", store=store, fallback=False)
    result = restore("srv", store=store)
    try:
        assert result.mode == "booted"
        assert (
            result.reason is not None
            and "CorruptSnapshotError" in result.reason
            and pages.name in result.reason
        )
        assert _ask(port)["warm"] == 0  # a fresh boot: no warm-up state
    finally:
        result.stop()


def test_edited_manifest_is_refused(server: tuple[list[str], int, Path]) -> None:
    _take(server)
    _, _, store = server
    path = snapshot_dir(store, "srv") / "manifest.json"
    data = json.loads(path.read_text())
    data["command"][0] = "/bin/false"
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptSnapshotError, match="edited or damaged"):
        restore("srv", store=store)


def test_incompatible_host_is_refused_naming_what_changed(
    server: tuple[list[str], int, Path],
) -> None:
    _take(server)
    _, port, store = server
    folder = snapshot_dir(store, "srv")
    m = read_manifest(folder)
    write_manifest(
        folder, m.with_host(kernel="5.4.0-fake", cpu_flags=(*m.host.cpu_flags, "avx10_fake"))
    )
    with pytest.raises(IncompatibleSnapshotError) as info:
        check("srv", store=store)
    message = str(info.value)
    assert f"kernel 5.4.0-fake -> {os.uname().release}" in message
    assert "CPU flags missing on this host: avx10_fake" in message
    result = restore("srv", store=store)
    try:
        assert result.mode == "booted" and "IncompatibleSnapshotError" in (result.reason or "")
        assert _ask(port)["warm"] == 0
    finally:
        result.stop()


def test_changed_mapped_file_is_refused(
    server: tuple[list[str], int, Path], tmp_path: Path
) -> None:
    _take(server)
    _, _, store = server
    folder = snapshot_dir(store, "srv")
    m = read_manifest(folder)
    fake_lib = tmp_path / "libfake.so"
    fake_lib.write_bytes(b"v1")
    from zerostart.snapshot._host import digest_file

    write_manifest(
        folder,
        type(m)(**{**m.__dict__, "mapped_files": (*m.mapped_files, digest_file(str(fake_lib)))}),
    )
    fake_lib.write_bytes(b"v2")
    with pytest.raises(IncompatibleSnapshotError, match=f"{fake_lib} changed content"):
        check("srv", store=store)


def test_criu_failure_falls_back_to_boot(server: tuple[list[str], int, Path]) -> None:
    """Images that pass our digests but that CRIU cannot use: restore must boot instead."""
    _take(server)
    _, port, store = server
    folder = snapshot_dir(store, "srv")
    images = folder / IMAGES_DIR
    core = next(images.glob("core-*.img"))
    core.unlink()  # it is a hardlink into the store: replace, do not write through
    core.write_bytes(b"\0" * 64)
    from zerostart.snapshot._store import dedup_images

    m = read_manifest(folder)
    digests, _ = dedup_images(store, images)
    write_manifest(folder, type(m)(**{**m.__dict__, "images": digests}))
    result = restore("srv", store=store)
    try:
        assert result.mode == "booted"
        assert result.reason is not None and result.reason.startswith("CriuError: criu restore")
        assert _ask(port)["warm"] == 0
    finally:
        result.stop()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = REPO / "models" / "minilm-embed"
    if not (src / "config.json").exists():
        pytest.skip("models/minilm-embed missing: run tools/make_models.py --out models")
    pytest.importorskip("safetensors")
    from zerostart.model.convert import convert

    out = tmp_path_factory.mktemp("bundle") / "minilm-embed"
    convert(src, out)
    return out


def test_zerostart_worker_restored_gives_the_booted_answer(bundle: Path, tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    port = free_port()
    cmd = [sys.executable, "-m", "zerostart.serve", str(bundle), "--port", str(port)]
    text = {"inputs": "Snapshots restore a warmed-up worker."}
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    taken = snapshot(
        "worker", cmd, warmup=Warmup("/embed", text), store=tmp_path / "store", env=env
    )
    assert taken.manifest.ready_url == f"http://127.0.0.1:{port}/health"
    assert any(f.path.endswith("weights.safetensors") for f in taken.manifest.mapped_files)
    result = restore("worker", store=tmp_path / "store", fallback=False)
    try:
        status, body = http_request(f"http://127.0.0.1:{port}/embed", "POST", text)
        assert status == 200
        restored = np.array(json.loads(body))
    finally:
        result.stop()
    again = restore("worker", store=tmp_path / "store", fallback=False, full_verify=True)
    again.stop()
    assert again.mode == "restored"
    # Reference: the same worker booted from scratch (no snapshot involved).
    boot_port = free_port()
    boot_cmd = [*cmd[:-1], str(boot_port)]
    _, answer, _ = time_cold_start(
        boot_cmd, boot_port, "/embed", text, lambda a: isinstance(a, list), env=env
    )
    expected = np.array(answer)
    assert restored.shape == (1, 384)
    np.testing.assert_allclose(restored, expected, atol=1e-6)
