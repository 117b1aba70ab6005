"""Start Debian's ``docker-registry`` (distribution 2.x) on loopback for a test.

A real registry, not a fake: each instance gets a free port, its own storage
folder and config file, and optionally htpasswd (bcrypt) basic auth. Its
stderr (including the access log, one line per request) goes to ``log_path``
so a test can count the requests the registry actually served.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from zerostart.procs import free_port

REGISTRY_BIN = "docker-registry"
# Cold start of the Go binary is ~50 ms here; 15 s covers a loaded CI machine.
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
HTPASSWD_TIMEOUT_S = 10.0


def registry_binary() -> str | None:
    return shutil.which(REGISTRY_BIN) or (
        "/usr/bin/docker-registry" if os.path.exists("/usr/bin/docker-registry") else None
    )


def make_htpasswd(path: Path, user: str, password: str) -> None:
    """bcrypt htpasswd file (the only hash distribution accepts), via apache2-utils."""
    tool = shutil.which("htpasswd")
    if tool is None:
        raise FileNotFoundError("htpasswd not installed (apt-get install apache2-utils)")
    out = subprocess.run(
        [tool, "-Bbn", user, password],
        capture_output=True,
        text=True,
        timeout=HTPASSWD_TIMEOUT_S,
        check=True,
    )
    path.write_text(out.stdout)


@dataclass
class RegistryServer:
    """A running registry: ``address`` is ``127.0.0.1:PORT``."""

    process: subprocess.Popen[bytes]
    port: int
    storage: Path
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def requests(self, method: str, path_part: str = "", status: int | None = None) -> int:
        """How many ``METHOD path`` requests (answered ``status``) the access log shows so far."""
        needle = f'"{method} '
        answered = f'" {status} ' if status is not None else ""
        return sum(
            1
            for line in self.log().splitlines()
            if line.startswith("127.0.0.1 - ")
            and needle in line
            and path_part in line
            and answered in line
        )

    def blob_data(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (for tampering tests)."""
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)


def _config(port: int, storage: Path, htpasswd: Path | None) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  accesslog:",
        "    disabled: false",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: zerostart-test-secret",
    ]
    if htpasswd is not None:
        lines += ["auth:", "  htpasswd:", "    realm: zerostart-test", f"    path: {htpasswd}"]
    return "\n".join(lines) + "\n"


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"docker-registry exited {proc.returncode}: {log_path.read_text()[-2000:]}"
            )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            conn.request("GET", "/v2/")
            if conn.getresponse().status in (200, 401):
                return
        except OSError:
            time.sleep(0.05)
        finally:
            conn.close()
    raise RuntimeError(
        f"docker-registry not ready in {START_TIMEOUT_S} s: {log_path.read_text()[-2000:]}"
    )


@contextlib.contextmanager
def running_registry(workdir: Path, *, htpasswd: Path | None = None) -> Iterator[RegistryServer]:
    """Start a registry in ``workdir`` and stop it afterwards, whatever happens."""
    binary = registry_binary()
    if binary is None:
        raise FileNotFoundError("docker-registry not installed (apt-get install docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(_config(port, storage, htpasswd))
    log_path = workdir / "registry.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log_file, stderr=subprocess.STDOUT
        )
    server = RegistryServer(proc, port, storage, log_path)
    try:
        _wait_ready(proc, port, log_path)
        yield server
    finally:
        server.stop()
