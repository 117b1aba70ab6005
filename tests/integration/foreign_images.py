"""Images built by other tools (umoci, pushed with skopeo): what `zerostart index` is for.

:func:`python_rootfs` lays out a python:slim-like root from this machine's
Debian files: ``/usr/bin/python3.11``, the shared libraries it and its
extension modules link (``ldd``), the standard library modules a small HTTP
server imports (or the whole standard library, ``full_stdlib=True``), the
server (:data:`SERVER`) and data files. :func:`umoci_image` turns a root into
a one-layer OCI image with ``umoci`` (its layers are plain ``tar+gzip``
written by pgzip), :func:`add_layer` puts a second layer over it;
:func:`skopeo_push` copies it to a registry unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

PYTHON = "/usr/bin/python3.11"
TOOL_TIMEOUT_S = 120.0

# The container's program: /health for the runner, /answer with digests of what it read.
SERVER = """
import hashlib, json, os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

def answer():
    out = {}
    with open("/app/data/notes.txt", "rb") as f:
        out["notes"] = hashlib.sha256(f.read()).hexdigest()
    with open("/app/data/big.bin", "rb") as f:  # 64 KiB from the middle: one or two spans
        f.seek(int(os.environ.get("READ_AT", "3000000")))
        out["big_slice"] = hashlib.sha256(f.read(65536)).hexdigest()
    out["link"] = os.readlink("/app/current")
    with open("/app/current/version", "rb") as f:
        out["version"] = f.read().decode()
    out["python"] = sys.version.split()[0]
    return out

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b"ok"
        elif self.path == "/answer":
            body = json.dumps(answer(), sort_keys=True).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 has no default SIGTERM action
args = sys.argv[1:]
host = args[args.index("--host") + 1]
port = int(args[args.index("--port") + 1])
HTTPServer((host, port), Handler).serve_forever()
"""
PROBE = "import hashlib, json, os, signal, sys, http.server, encodings.idna, encodings.utf_8"


def tools_missing() -> str | None:
    for tool in ("umoci", "skopeo"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/install_system_deps.sh)"
    if not os.path.exists(PYTHON):
        return f"{PYTHON} not on this machine (the test image is made from it)"
    return None


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _copy(src: str, root: Path) -> None:
    dest = root / src.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copy2(os.path.realpath(src), dest)


def _libraries(paths: list[str]) -> set[str]:
    libs: set[str] = set()
    for path in paths:
        for line in _run(["ldd", path]).splitlines():
            parts = line.split()
            if "=>" in parts and parts[parts.index("=>") + 1].startswith("/"):
                libs.add(parts[parts.index("=>") + 1])
            elif parts and parts[0].startswith("/"):
                libs.add(parts[0])
    return libs


def text_bytes(n: int, seed: int) -> bytes:
    """``n`` bytes of compressible text (deflate blocks of the usual kind, not stored ones)."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex() for _ in range(4000)]
    out = bytearray()
    while len(out) < n:
        out += " ".join(rng.choices(words, k=200)).encode() + b"\n"
    return bytes(out[:n])


def python_rootfs(
    root: Path, *, full_stdlib: bool = False, big_bytes: int = 8_000_000
) -> dict[str, bytes]:
    """Lay out the root; returns its data files (path in the image -> bytes)."""
    stdlib = Path(PYTHON.replace("/bin/", "/lib/"))  # /usr/lib/python3.11
    loaded = json.loads(
        _run(
            [
                PYTHON,
                "-c",
                f"{PROBE}; import json, sys; print(json.dumps(sorted(m.__file__ for m in "
                "list(sys.modules.values()) if getattr(m, '__file__', None))))",
            ]
        )
    )
    if full_stdlib:
        shutil.copytree(stdlib, root / str(stdlib).lstrip("/"), symlinks=True, dirs_exist_ok=True)
        so_files = [str(p) for p in (stdlib / "lib-dynload").glob("*.so")]
    else:
        for path in loaded:
            _copy(path, root)
        _copy(str(stdlib / "os.py"), root)  # the landmark Python finds its prefix by
        so_files = [p for p in loaded if p.endswith(".so")]
    _copy(PYTHON, root)
    for lib in _libraries([PYTHON, *so_files]):
        _copy(lib, root)
    data = {
        "app/data/notes.txt": b"notes of a foreign image\n" * 40,
        "app/data/big.bin": text_bytes(big_bytes, 11),
        "app/releases/v1/version": b"1.0.7\n",
        "app/serve.py": SERVER.encode(),
    }
    for name, body in data.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)
    os.symlink("releases/v1", root / "app/current")
    return data


def expected_answer(data: dict[str, bytes], read_at: int = 3_000_000) -> dict[str, str]:
    big = data["app/data/big.bin"]
    return {
        "big_slice": hashlib.sha256(big[read_at : read_at + 65536]).hexdigest(),
        "link": "releases/v1",
        "notes": hashlib.sha256(data["app/data/notes.txt"]).hexdigest(),
        "python": _run([PYTHON, "-c", "import sys; print(sys.version.split()[0])"]).strip(),
        "version": data["app/releases/v1/version"].decode(),
    }


def umoci_image(root: Path, layout: Path, tag: str = "1") -> None:
    """A one-layer image of ``root`` at ``layout:tag``, entrypoint the server."""
    _run(["umoci", "init", "--layout", str(layout)])
    _run(["umoci", "new", "--image", f"{layout}:{tag}"])
    _run(["umoci", "insert", "--image", f"{layout}:{tag}", str(root), "/"])
    _run(
        [
            "umoci",
            "config",
            "--image",
            f"{layout}:{tag}",
            "--config.entrypoint",
            PYTHON,
            "--config.entrypoint",
            "/app/serve.py",
            "--config.env",
            "PYTHONDONTWRITEBYTECODE=1",
        ]
    )
    _run(["umoci", "gc", "--layout", str(layout)])


def add_layer(layout: Path, tag: str, files: dict[str, bytes], work: Path) -> None:
    """A second layer over the first (``umoci insert``): ``files`` replace or add paths."""
    top = work / "top-layer"
    for name, body in files.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(body)
    _run(["umoci", "insert", "--image", f"{layout}:{tag}", str(top), "/"])


def skopeo_push(layout: Path, tag: str, reference: str) -> None:
    """Copy the image to the registry as it is (no conversion, no recompression)."""
    _run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
            f"oci:{layout}:{tag}",
            f"docker://{reference}",
        ]
    )


ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"


def zstd_image(layout: Path, tag: str, out: Path, *, multi_frame: bool = True) -> None:
    """A copy of ``layout`` whose ``tag`` has its gzip layers recompressed as zstd.

    ``multi_frame``: by ``pzstd -1`` (a frame per ~2 MiB of tar, each with a
    skippable size header: seekable at frame starts), else by ``zstd`` (one
    frame, as the zstd CLI and Go's klauspost/compress write). The tar, and so
    the config's ``diff_ids``, stay the same; manifest and index name the new blobs.
    """
    shutil.copytree(layout, out)
    blobs = out / "blobs" / "sha256"
    index = json.loads((out / "index.json").read_text())
    (top,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    manifest = json.loads((blobs / top["digest"].split(":", 1)[1]).read_bytes())
    for desc in manifest["layers"]:
        raw = blobs / desc["digest"].split(":", 1)[1]
        tar = out / "layer.tar"
        tar.write_bytes(gzip.decompress(raw.read_bytes()))
        tool = ["pzstd", "-1", "-p", "2"] if multi_frame else ["zstd", "-3"]
        _run([*tool, "-q", "-f", str(tar), "-o", str(out / "layer.zst")])
        data = (out / "layer.zst").read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        desc |= {"mediaType": ZSTD_LAYER, "digest": f"sha256:{digest}", "size": len(data)}
        tar.unlink()
        (out / "layer.zst").unlink()
    body = json.dumps(manifest).encode()
    digest = hashlib.sha256(body).hexdigest()
    (blobs / digest).write_bytes(body)
    top |= {"digest": f"sha256:{digest}", "size": len(body)}
    (out / "index.json").write_text(json.dumps(index))
