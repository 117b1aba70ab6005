"""Push and pull against a real registry: Debian's docker-registry on loopback.

Each image is a real OCI layout built here: one gzip tar layer with real
files, a config whose diff_id is the tar's sha256, a manifest. skopeo, an
independent client, checks what we push. The registry's own access log is the
witness for what went over the wire (skipped blobs, chunks, mounts).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
import io
import json
import random
import shutil
import socket
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_server import RegistryServer, make_htpasswd, registry_binary, running_registry

from zerostart.errors import ZerostartError
from zerostart.oci import OCI_INDEX, OCI_MANIFEST, REF_NAME_ANNOTATION, read_oci_layout
from zerostart.registry import client as reg

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        registry_binary() is None,
        reason="docker-registry not installed (apt-get install docker-registry)",
    ),
]

SKOPEO_TIMEOUT_S = 60
LAYER_PAYLOAD_BYTES = 300_000  # incompressible, so the gzip layer is ~300 kB: several chunks
SMALL_CHUNK_BYTES = 64 * 1024  # forces the PATCH path on a small test layer
SOURCE_DATE_EPOCH = 1_700_000_000


# --------------------------------------------------------------------------- an OCI layout


def _tar_layer(seed: int) -> bytes:
    rng = random.Random(seed)
    files = {
        "app/README.txt": f"zerostart registry test image, seed {seed}\n".encode(),
        "app/model/weights.bin": rng.randbytes(LAYER_PAYLOAD_BYTES),
        "app/model/config.json": json.dumps({"seed": seed, "hidden": 384}).encode(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirname in ("app", "app/model"):
            info = tarfile.TarInfo(dirname)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, SOURCE_DATE_EPOCH
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, SOURCE_DATE_EPOCH
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def _write_blob(root: Path, data: bytes) -> dict[str, Any]:
    hexd = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / "sha256" / hexd
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{hexd}", "size": len(data)}


def make_layout(root: Path, seed: int, tag: str = "1") -> dict[str, str]:
    """An OCI image layout with one real layer; returns the digests by role."""
    root.mkdir(parents=True)
    tar = _tar_layer(seed)
    layer = _write_blob(root, gzip.compress(tar, mtime=0))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/app/run"], "User": "65532"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
    }
    cfg = _write_blob(root, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }
    man = _write_blob(root, json.dumps(manifest, sort_keys=True).encode())
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, **man, "annotations": {REF_NAME_ANNOTATION: tag}}
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    return {"manifest": man["digest"], "config": cfg["digest"], "layer": layer["digest"]}


def blob_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "blobs" / "sha256").iterdir())}


def assert_same_image(src: Path, dst: Path, manifest_digest: str) -> None:
    assert blob_files(dst) == blob_files(src)  # byte for byte, and no stray temp files
    index = json.loads((dst / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [manifest_digest]
    assert json.loads((dst / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with running_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("image") / "layout"
    return root, make_layout(root, seed=1)


# --------------------------------------------------------------------------- round trips


def test_chunked_push_pulls_back_byte_identical(
    registry: RegistryServer, image: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, digests = image
    ref = f"{registry.address}/rt/chunked:1"
    result = reg.push(
        src, ref, chunk_size_bytes=SMALL_CHUNK_BYTES, monolithic_max_bytes=SMALL_CHUNK_BYTES
    )
    layer_size = (src / "blobs/sha256" / digests["layer"].split(":")[1]).stat().st_size
    assert result.digest == digests["manifest"] and result.media_type == OCI_MANIFEST
    assert (result.blobs_uploaded, result.blobs_skipped, result.blobs_mounted) == (2, 0, 0)
    chunks = -(-layer_size // SMALL_CHUNK_BYTES)
    assert registry.requests("PATCH", "/v2/rt/chunked/blobs/uploads/") == chunks

    pulled = reg.pull(ref, tmp_path / "out")
    assert pulled.digest == digests["manifest"] and pulled.blobs_downloaded == 2
    assert_same_image(src, tmp_path / "out", digests["manifest"])


def test_monolithic_push_sends_each_blob_in_one_put(
    registry: RegistryServer, image: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, digests = image
    reg.push(src, f"{registry.address}/rt/mono:1")
    assert registry.requests("PATCH", "/v2/rt/mono/") == 0
    assert registry.requests("PUT", "/v2/rt/mono/blobs/uploads/") == 2
    reg.pull(f"{registry.address}/rt/mono@{digests['manifest']}", tmp_path / "out")
    assert blob_files(tmp_path / "out") == blob_files(src)


def test_second_push_skips_every_blob(
    registry: RegistryServer, image: tuple[Path, dict[str, str]]
) -> None:
    src, _ = image
    ref = f"{registry.address}/rt/again:1"
    reg.push(src, ref)
    uploads_before = registry.requests("POST", "/v2/rt/again/blobs/uploads/")
    again = reg.push(src, ref)
    assert (again.blobs_uploaded, again.blobs_skipped, again.bytes_uploaded) == (0, 2, 0)
    assert registry.requests("POST", "/v2/rt/again/blobs/uploads/") == uploads_before == 2


def test_blobs_are_mounted_from_another_repository(
    registry: RegistryServer, image: tuple[Path, dict[str, str]]
) -> None:
    src, _ = image
    reg.push(src, f"{registry.address}/rt/base:1")
    result = reg.push(src, f"{registry.address}/rt/mounted:1", mount_from="rt/base")
    assert (result.blobs_mounted, result.blobs_uploaded, result.bytes_uploaded) == (2, 0, 0)
    assert registry.requests("POST", "/v2/rt/mounted/blobs/uploads/?mount=", status=201) == 2
    assert registry.requests("POST", "&from=rt%2Fbase", status=201) == 2


def test_layout_with_two_images_pushes_one_by_tag_or_all_as_an_index(
    registry: RegistryServer, tmp_path: Path
) -> None:
    a = make_layout(tmp_path / "a", seed=5, tag="a")
    b = make_layout(tmp_path / "b", seed=6, tag="b")
    both = tmp_path / "both"  # one layout, two tagged images, as two models on one runtime
    shutil.copytree(tmp_path / "a", both)
    shutil.copytree(tmp_path / "b" / "blobs", both / "blobs", dirs_exist_ok=True)
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    index["manifests"] += json.loads((tmp_path / "b" / "index.json").read_text())["manifests"]
    (both / "index.json").write_text(json.dumps(index))

    only_b = reg.push(both, f"{registry.address}/rt/multi:b")
    assert only_b.digest == b["manifest"] and only_b.media_type == OCI_MANIFEST

    everything = reg.push(both, f"{registry.address}/rt/multi:all")
    assert everything.media_type == OCI_INDEX
    assert everything.blobs_skipped == 2 and everything.blobs_uploaded == 2  # b's were there
    pulled = reg.pull(f"{registry.address}/rt/multi:all", tmp_path / "out")
    assert pulled.digest == everything.digest and pulled.blobs_downloaded == 4
    got = blob_files(tmp_path / "out")
    for digest in (*a.values(), *b.values()):
        assert got[digest.split(":")[1]] == blob_files(both)[digest.split(":")[1]]


def test_image_from_the_builder_round_trips_and_reads_back(
    registry: RegistryServer, tmp_path: Path
) -> None:
    """What `zerostart build` writes, pushed and pulled, is what `zerostart run` reads."""
    oci = pytest.importorskip("zerostart.image.oci", reason="image builder not present")
    layers = pytest.importorskip("zerostart.image.layers", reason="image builder not present")
    entries = [
        layers.Entry("/app/serve.py", "file", data=b"print('hello')\n"),
        layers.Entry("/app/weights.bin", "file", data=random.Random(7).randbytes(100_000)),
    ]
    layer = layers.write_layer("model", entries, tmp_path / "work", mtime=SOURCE_DATE_EPOCH)
    written = oci.write_oci_layout(
        tmp_path / "built", oci.ImageConfig(entrypoint=("/app/serve.py",)), [layer], {}, tag="1"
    )
    ref = f"{registry.address}/rt/built:1"
    assert reg.push(tmp_path / "built", ref).digest == written.manifest_digest
    reg.pull(ref, tmp_path / "out")
    image = read_oci_layout(tmp_path / "out", tag="1")
    assert image.manifest_digest == written.manifest_digest
    assert [la.digest for la in image.layers] == [layer.digest]


# --------------------------------------------------------------------------- independent client


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_skopeo_accepts_what_we_push_and_we_pull_what_skopeo_pushes(
    registry: RegistryServer, image: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, digests = image
    ref = f"{registry.address}/rt/skopeo:1"
    reg.push(src, ref)

    def skopeo(*args: str) -> str:
        out = subprocess.run(
            ["skopeo", *args], capture_output=True, text=True, timeout=SKOPEO_TIMEOUT_S
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))
    assert info["Digest"] == digests["manifest"] and info["Layers"] == [digests["layer"]]
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}").encode()
    assert raw == blob_files(src)[digests["manifest"].split(":")[1]]
    # skopeo downloads and checks every blob we stored
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'by-skopeo'}:1")

    other = f"{registry.address}/rt/from-skopeo:1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{src}:1", f"docker://{other}")
    theirs = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{other}"))
    pulled = reg.pull(other, tmp_path / "out")
    assert pulled.digest == theirs["Digest"]
    assert digests["layer"].split(":")[1] in blob_files(tmp_path / "out")


# --------------------------------------------------------------------------- refusals


def test_tampered_blob_is_refused_and_never_written(
    registry: RegistryServer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    digests = make_layout(src, seed=2)  # its own blobs: tampering must not touch other tests'
    ref = f"{registry.address}/rt/tampered:1"
    reg.push(src, ref)
    stored = registry.blob_data(digests["layer"])
    original = stored.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    stored.write_bytes(bytes(flipped))
    out = tmp_path / "out"
    with pytest.raises(reg.DigestMismatchError, match="does not match") as info:
        reg.pull(ref, out)
    assert digests["layer"] in str(info.value) and "tampered" in str(info.value)
    layer_name = digests["layer"].split(":")[1]
    assert layer_name not in blob_files(out)
    assert not list(out.rglob("*.partial"))
    assert not (out / "index.json").exists()

    stored.write_bytes(original + b"extra")  # a longer blob is refused before it is read
    with pytest.raises(reg.DigestMismatchError, match=r"sends \d+ bytes, expected"):
        reg.pull(ref, out)
    stored.write_bytes(original)
    reg.pull(ref, out)
    assert_same_image(src, out, digests["manifest"])


def test_unknown_tag_is_a_clear_not_found(registry: RegistryServer, tmp_path: Path) -> None:
    with pytest.raises(reg.RegistryNotFoundError) as info:
        reg.pull(f"{registry.address}/rt/nothing-here:missing", tmp_path / "out")
    message = str(info.value)
    assert registry.address in message and "rt/nothing-here:missing" in message
    assert "404" in message and ("MANIFEST_UNKNOWN" in message or "NAME_UNKNOWN" in message)
    assert not (tmp_path / "out" / "index.json").exists()


def test_registry_down_names_the_registry_and_the_fix(
    image: tuple[Path, dict[str, str]],
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(reg.RegistryUnreachableError) as info:
        reg.push(image[0], f"127.0.0.1:{port}/rt/x:1")
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "connection refused" in message
    assert "is the registry running" in message and not info.value.retryable


def test_silent_registry_times_out(tmp_path: Path) -> None:
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        with pytest.raises(reg.RegistryUnreachableError, match=r"no answer within 0.3 s"):
            reg.pull(f"127.0.0.1:{port}/rt/x:1", tmp_path / "out", timeout_s=0.3)


# --------------------------------------------------------------------------- interruptions


class _Abort(Exception):
    """Stands in for Ctrl-C / a killed job, raised from the progress callback."""


def _abort_midway(kind: str, fraction: float) -> reg.Progress:
    def progress(step: str, done: float) -> None:
        if step.startswith(kind) and done > fraction:
            raise _Abort(step)

    return progress


def test_interrupted_push_is_finished_by_running_it_again(
    registry: RegistryServer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    digests = make_layout(src, seed=3)
    ref = f"{registry.address}/rt/interrupted:1"
    small = {"chunk_size_bytes": SMALL_CHUNK_BYTES, "monolithic_max_bytes": SMALL_CHUNK_BYTES}
    with pytest.raises(_Abort):
        reg.push(src, ref, progress=_abort_midway("upload", 0.5), **small)
    assert registry.requests("PATCH", "/v2/rt/interrupted/") >= 1  # stopped inside the layer
    with pytest.raises(reg.RegistryNotFoundError):
        reg.pull(ref, tmp_path / "nothing")

    again = reg.push(src, ref, **small)
    assert (again.blobs_skipped, again.blobs_uploaded) == (1, 1)  # config was already there
    reg.pull(ref, tmp_path / "out")
    assert_same_image(src, tmp_path / "out", digests["manifest"])


def test_interrupted_pull_leaves_no_partial_blob(
    registry: RegistryServer, image: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, digests = image
    ref = f"{registry.address}/rt/pull-interrupted:1"
    reg.push(src, ref)
    out = tmp_path / "out"
    with pytest.raises(_Abort):
        reg.pull(ref, out, progress=_abort_midway("fetch", 0.3))
    assert digests["layer"].split(":")[1] not in blob_files(out)
    assert not list(out.rglob("*.partial")) and not (out / "index.json").exists()
    again = reg.pull(ref, out)
    assert again.blobs_downloaded + again.blobs_present == 2 and again.blobs_downloaded >= 1
    assert_same_image(src, out, digests["manifest"])


class _CuttingProxy:
    """TCP relay to the registry that resets the connection once, mid-transfer.

    A real network failure in the middle of a chunk: the push has to find out
    what the registry kept and carry on, within the same call.
    """

    def __init__(self, target_port: int, cut_after_bytes: int) -> None:
        self.target_port, self.cut_after_bytes = target_port, cut_after_bytes
        self.forwarded, self.cuts = 0, 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    cut = (
                        outbound
                        and self.cuts == 0
                        and self.forwarded + len(data) > self.cut_after_bytes
                    )
                    if cut:
                        data = data[: self.cut_after_bytes - self.forwarded]
                        self.cuts += 1
                    if outbound:
                        self.forwarded += len(data)
                dst.sendall(data)
                if cut:
                    for s in (src, dst):  # RST, not FIN: the way a dropped link looks
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                        s.close()
                    return
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


def test_connection_cut_mid_chunk_is_recovered_within_the_push(
    registry: RegistryServer, tmp_path: Path
) -> None:
    """A reset in the middle of a PATCH: the same push() call still succeeds.

    The push asks the registry where the upload stands and continues from its
    Range; distribution 2.8 refuses to resume after a partial chunk (its
    signed upload state no longer matches the bytes it kept), so there the
    blob restarts in a fresh upload. Either way nothing corrupt is stored.
    """
    src = tmp_path / "src"
    digests = make_layout(src, seed=4)
    proxy = _CuttingProxy(registry.port, cut_after_bytes=LAYER_PAYLOAD_BYTES // 2)
    try:
        ref = f"127.0.0.1:{proxy.port}/rt/cut:1"
        result = reg.push(
            src, ref, chunk_size_bytes=SMALL_CHUNK_BYTES, monolithic_max_bytes=SMALL_CHUNK_BYTES
        )
    finally:
        proxy.close()
    assert proxy.cuts == 1 and result.digest == digests["manifest"]
    assert result.blobs_uploaded == 2
    # the push asked the registry where the upload stood (GET on the upload URL)
    assert registry.requests("GET", "/v2/rt/cut/blobs/uploads/") == 1
    reg.pull(f"{registry.address}/rt/cut:1", tmp_path / "out")
    assert_same_image(src, tmp_path / "out", digests["manifest"])


# --------------------------------------------------------------------------- auth


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    if shutil.which("htpasswd") is None:
        pytest.skip("htpasswd not installed (apt-get install apache2-utils): no bcrypt file")
    work = tmp_path_factory.mktemp("auth-registry")
    make_htpasswd(work / "htpasswd", "alice", "correct horse")
    with running_registry(work, htpasswd=work / "htpasswd") as server:
        yield server


def test_auth_failures_are_clear(
    auth_registry: RegistryServer,
    image: tuple[Path, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    ref = f"{auth_registry.address}/rt/private:1"
    with pytest.raises(reg.RegistryAuthError) as info:
        reg.push(image[0], ref)
    message = str(info.value)
    assert auth_registry.address in message and "login required" in message
    assert "401" in message and "docker login" in message

    with pytest.raises(reg.RegistryAuthError) as info:
        reg.push(image[0], ref, auth=("alice", "wrong"))
    assert "refused for user 'alice'" in str(info.value) and "401" in str(info.value)


def test_login_with_arguments_or_docker_config(
    auth_registry: RegistryServer,
    image: tuple[Path, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, digests = image
    ref = f"{auth_registry.address}/rt/private:1"
    assert reg.push(src, ref, auth=("alice", "correct horse")).digest == digests["manifest"]

    config = tmp_path / "docker"
    config.mkdir()
    token = base64.b64encode(b"alice:correct horse").decode()
    (config / "config.json").write_text(
        json.dumps({"auths": {auth_registry.address: {"auth": token}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    reg.pull(ref, tmp_path / "out")
    assert_same_image(src, tmp_path / "out", digests["manifest"])


# --------------------------------------------------------------------------- CLI


def test_cli_push_and_pull_report_progress_on_stderr(
    registry: RegistryServer,
    image: tuple[Path, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from zerostart.cli.registry import add_subcommands

    parser = argparse.ArgumentParser(prog="zerostart")
    add_subcommands(parser.add_subparsers(dest="command"))
    src, digests = image
    ref = f"{registry.address}/rt/cli:1"

    args = parser.parse_args(["push", str(src), ref])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert f"pushed {ref} {digests['manifest']}" in out and "2 blobs uploaded" in out
    assert "upload" in err and digests["layer"].split(":")[1][:12] in err

    args = parser.parse_args(["pull", ref, str(tmp_path / "out"), "--timeout", "30"])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert "digests verified" in out and "fetch" in err
    assert_same_image(src, tmp_path / "out", digests["manifest"])

    args = parser.parse_args(["pull", ref, str(tmp_path / "x"), "--username", "bob"])
    monkey_env = {"ZEROSTART_REGISTRY_PASSWORD": ""}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in monkey_env.items():
            mp.setenv(k, v)
        with pytest.raises(ZerostartError, match="without a password"):
            args.func(args)
