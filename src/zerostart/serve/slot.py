"""A warm slot: a worker that has paid for everything but the model, waiting to be given one.

``python -m zerostart.serve --slot SOCKET --canary DIR [--device cpu|cuda]``

Theory of operation (the slot's side; the pool's is ``zerostart.platform.slot``)::

    bind SOCKET (0600, in a 0700 folder we own)       stdlib only, first thing
    import the pipeline, native engine, tokenizers, server       "imports"
    [cuda] driver, context, GPU checks (engine/cuda/health)      "gpu_health"
    load the canary bundle, run it, compare with its known answer "health"
    accept ONE connection, from our own uid (SO_PEERCRED)
      -> {"type": "ready", "control": ["ping"], ...}  or {"type": "unhealthy", "reason"}, exit 3
    <- {"type": "ping"}  -> {"type": "pong"}       (any number of times while waiting)
    <- {"type": "assign", "bundle": ..., "port": 0, ...}   (EOF instead: exit 0)
    map the bundle, tokenizer, engine, listen (no warm-up batch: see _load)
      -> {"type": "serving", "port": ..., "phases": ...}  or {"type": "error", "error": ...,
         "fault": "model" | "node" | "slot"} (zerostart.faults) and exit 1
    serve until {"type": "stop"}, SIGTERM/SIGINT, or EOF on the control socket (the pool
    is gone: a slot never outlives its pool), then drain like any worker

Messages are JSON objects, one per line (UTF-8, at most ``MAX_MESSAGE_BYTES``).
The control socket is a Unix socket: only processes that can open the file may
connect (the folder is 0700, the socket 0600), and the slot also refuses a peer
whose uid is not its own. After the one accepted connection the socket file is
removed, so nothing else can ever connect. The listening port is loopback
unless the pool asks otherwise.

Runtime module: standard library; the heavy imports happen in :func:`run_slot`
on purpose (they are what a slot pre-pays).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import sys
import time
from typing import Any

from zerostart.errors import ServeError, ZerostartError
from zerostart.serve.startup import Startup

log = logging.getLogger("zerostart.serve.slot")

MAX_MESSAGE_BYTES = 64 * 1024  # an assign message is < 1 KiB; bounds what a peer can make us buffer
ACCEPT_TIMEOUT_S = 60.0  # the pool connects right after spawning us; longer means it is gone
EXIT_UNHEALTHY = 3  # exit status of a slot that failed its health check
EXIT_ASSIGN_FAILED = 1

_PEERCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;} (socket(7))


# -- framing: shared with zerostart.platform.slot ------------------------------------------
def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of compact JSON."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line; ServeError unless it is a JSON object with a string ``type``."""
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServeError(f"control message is not JSON: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ServeError(f"control message must be an object with a 'type', got {line[:80]!r}")
    return message


class LineReader:
    """Reads newline-framed messages from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def read(self) -> dict[str, Any] | None:
        """The next message, or None at EOF."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_MESSAGE_BYTES:
                raise ServeError(f"control message over {MAX_MESSAGE_BYTES} bytes")
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return decode(line)


# -- the control socket --------------------------------------------------------------------
def check_private_dir(path: str) -> None:
    """ServeError unless ``path``'s folder is ours and closed to everyone else (mode & 077 == 0)."""
    folder = os.path.dirname(os.path.abspath(path))
    st = os.stat(folder)
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise ServeError(
            f"control socket folder {folder} is mode {stat.S_IMODE(st.st_mode):o}, owner uid "
            f"{st.st_uid}: another user could reach the socket",
            hint="the pool creates a 0700 folder owned by its user; use that",
        )


def bind_control(path: str) -> socket.socket:
    """Listen on a new Unix socket at ``path``, created 0600 (the umask is set around bind)."""
    check_private_dir(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot bind control socket {path}: {exc.strerror or exc}") from exc
    finally:
        os.umask(old)
    sock.listen(1)
    return sock


def peer_uid(conn: socket.socket) -> int:
    """The connecting process's uid, from the kernel (SO_PEERCRED), not from anything it says."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return int(_PEERCRED.unpack(raw)[1])


def accept_owner(
    listener: socket.socket, path: str, timeout_s: float, allow_uid: int | None = None
) -> socket.socket:
    """Accept the first connection from our own uid (or ``allow_uid``); others are closed."""
    allowed = {os.getuid()} | ({allow_uid} if allow_uid is not None else set())
    deadline = time.monotonic() + timeout_s
    while True:
        listener.settimeout(max(0.0, deadline - time.monotonic()))
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            raise ServeError(f"nobody connected to {path} within {timeout_s:.0f} s") from None
        uid = peer_uid(conn)
        if uid in allowed:
            conn.settimeout(None)
            return conn
        log.warning("refused a control connection from uid %d", uid)
        conn.close()


# -- the slot's life -------------------------------------------------------------------
def _preload(device: str) -> None:
    """Import everything serving a model needs, so an assignment imports nothing.

    No numpy: the canary and every CPU bundle with native kernels run on
    ``NativeCpuEngine`` (a canary written without a compiler falls back to the numpy
    engine, which then imports numpy in the health check). The tokenizers of every
    kind are imported too: the canary exercises WordPiece only, and an assigned
    model may bring a compiled Unigram or BPE tokenizer.
    """
    import asyncio  # noqa: F401

    import zerostart.bundle.folder
    import zerostart.engine.canary
    import zerostart.engine.cpu_native  # the canary's engine and a real bundle's
    import zerostart.pipeline
    import zerostart.serve.server
    import zerostart.tokenize
    import zerostart.tokenize._pipeline  # Unigram / BPE bundles (tokenizer.bin)

    if device == "cuda":
        import zerostart.engine.cuda  # noqa: F401


def _cpu_health(canary: str) -> dict[str, Any]:
    """Known-answer forward pass of the canary through the same path a real model takes."""
    from zerostart.engine.canary import CANARY_INPUTS, check_logits
    from zerostart.pipeline import Pipeline

    pipe = Pipeline.load(canary, verify="full")
    enc = pipe.tokenizer.encode_batch(list(CANARY_INPUTS), max_length=pipe.manifest.max_length)
    check_logits(pipe.execute(enc))
    return {"canary": "ok", "engine": type(pipe.engine).__name__}


def _gpu_health() -> dict[str, Any]:
    from zerostart.engine.cuda.health import run_checks

    return dict(run_checks())


def _health(canary: str, device: str, startup: Startup) -> tuple[dict[str, Any], str | None]:
    checks: dict[str, Any] = {}
    try:
        if device == "cuda":
            checks["gpu"] = _gpu_health()
            startup.mark("gpu_health")
        checks.update(_cpu_health(canary))
        startup.mark("health")
    except ZerostartError as exc:
        return checks, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug or a broken install: still a failed health check
        return checks, f"{type(exc).__name__}: {exc}"
    return checks, None


def run_slot(
    socket_path: str,
    canary: str,
    *,
    device: str = "cpu",
    startup: Startup | None = None,
    allow_uid: int | None = None,
) -> int:
    """Be a slot on ``socket_path`` until assigned and then serve; returns the exit status."""
    startup = startup or Startup.begin()
    startup.mode = "slot"
    listener = bind_control(socket_path)
    try:
        _preload(device)
        startup.mark("imports")
        checks, problem = _health(canary, device, startup)
        startup.resume_gc()  # paused by the entry point for the imports and the canary
        conn = accept_owner(listener, socket_path, ACCEPT_TIMEOUT_S, allow_uid)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
    with conn:
        boot = {k: round(v, 6) for k, v in startup.phases.items()}
        if problem is not None:
            log.error("slot failed its health check: %s", problem)
            conn.sendall(encode({"type": "unhealthy", "reason": problem, "checks": checks}))
            return EXIT_UNHEALTHY
        conn.sendall(
            encode(
                {
                    "type": "ready",
                    "pid": os.getpid(),
                    "device": device,
                    "phases": boot,
                    "checks": checks,
                    "control": ["ping"],  # what a pool may send besides assign/stop
                }
            )
        )
        reader = LineReader(conn)
        message = reader.read()
        while message is not None and message["type"] == "ping":  # the pool's health probe
            conn.sendall(encode({"type": "pong"}))
            message = reader.read()
        if message is None or message["type"] == "stop":
            return 0  # discarded by the pool before it was used
        if message["type"] != "assign":
            conn.sendall(encode({"type": "error", "error": f"unexpected {message['type']!r}"}))
            return EXIT_ASSIGN_FAILED
        return _assigned(conn, reader, message, boot)


def _load(bundle_dir: str, verify: str, limits: Any, auto_truncate: bool) -> Any:
    """``Pipeline.load``, without the cold boot's warm-up batch.

    The canary has already run the engine's code in this process, so a warm-up
    batch of the model would only fault its weight pages in earlier, which the
    first request does anyway, at the cost of one more forward pass. Measured
    here (12 pairs of fresh slot-like processes, MiniLM, load average ~10):
    assignment to first answer 82 ms median without the warm-up, 108 ms with it.
    Running the warm-up on a second thread while the tokenizer loads was worse
    still (the two contend for the GIL): 114 ms against 106 ms sequential.
    """
    from zerostart.pipeline import Pipeline

    return Pipeline.load(bundle_dir, verify=verify, limits=limits, auto_truncate=auto_truncate)


def _error_message(exc: BaseException) -> dict[str, Any]:
    """An assignment failure for the pool, classified here, where the exception is:
    ``fault`` is ``zerostart.faults.fault_of``'s kind (model, node or slot)."""
    from zerostart.faults import fault_of

    return {
        "type": "error",
        "error": str(exc),
        "error_type": type(exc).__name__,
        "fault": fault_of(exc),
    }


def _assigned(
    conn: socket.socket, reader: LineReader, message: dict[str, Any], boot: dict[str, float]
) -> int:
    """Load the model named in ``message`` and serve it until stopped."""
    import asyncio

    from zerostart.serve.config import ServerConfig

    startup = Startup(interpreter_s=None, mode="slot")  # phases from the assignment on
    try:
        config = ServerConfig(**message.get("server", {}))
        pipeline = _load(
            str(message["bundle"]),
            str(message.get("verify", "fast")),
            config.limits,
            config.auto_truncate,
        )
        startup.add(pipeline.phases)
    except (ZerostartError, KeyError, TypeError, ValueError) as exc:
        log.error("assignment failed: %s", exc)
        conn.sendall(encode(_error_message(exc)))
        return EXIT_ASSIGN_FAILED
    asyncio.run(_serve(conn, reader, pipeline, config, startup, boot))
    return 0


async def _serve(
    conn: socket.socket,
    reader: LineReader,
    pipeline: Any,
    config: Any,
    startup: Startup,
    boot: dict[str, float],
) -> None:
    import asyncio
    import signal

    from zerostart.serve.server import Server

    loop = asyncio.get_running_loop()
    server = Server(pipeline, config, startup=startup)
    try:
        await server.start()
    except ZerostartError as exc:
        conn.sendall(encode(_error_message(exc)))
        raise
    phases = {k: round(v, 6) for k, v in startup.phases.items()}
    conn.sendall(
        encode({"type": "serving", "port": server.port, "url": server.url, "phases": phases})
    )
    print(f"zerostart: slot ready on {server.url}", file=sys.stderr, flush=True)
    log.info("slot assigned (boot %s): %s", boot, phases)

    conn.setblocking(False)

    def on_control() -> None:
        try:
            chunk = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the pool is gone: so are we
            loop.remove_reader(conn.fileno())
            server.begin_shutdown()
            return
        reader.buffer += chunk
        while b"\n" in reader.buffer:
            line, _, reader.buffer = reader.buffer.partition(b"\n")
            try:
                kind = decode(line)["type"]
            except ServeError as exc:
                log.warning("%s", exc)
                continue
            if kind == "stop":
                server.begin_shutdown()

    loop.add_reader(conn.fileno(), on_control)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.begin_shutdown)
    try:
        await server.serve_until_shutdown()
    finally:
        loop.remove_reader(conn.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main(argv: list[str], prog: str, startup: Startup) -> int:
    """``python -m zerostart.serve --slot SOCKET --canary DIR``; see the module docstring."""
    import argparse

    p = argparse.ArgumentParser(
        prog=prog,
        # a fixed width, as the worker's parser: the default asks shutil for the terminal
        # size, and shutil is not in a slot image (nor on the worker's cold-start path)
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=100),
        description="Be a warm slot: pre-import, pass a health check, wait for a model on SOCKET.",
    )
    p.add_argument("--slot", required=True, metavar="SOCKET", help="control socket path to bind")
    p.add_argument("--canary", required=True, help="canary bundle for the health check")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--allow-uid",
        type=int,
        default=None,
        help="also accept the pool from this uid (a slot in a container runs as another user)",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return run_slot(
            args.slot, args.canary, device=args.device, startup=startup, allow_uid=args.allow_uid
        )
    except ZerostartError as exc:
        print(f"zerostart: error: {exc}", file=sys.stderr)
        return 1
