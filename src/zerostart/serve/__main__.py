"""Worker entry point: ``python -m zerostart.serve BUNDLE [options]``.

``python -m zerostart.serve --slot SOCKET --canary DIR`` runs a warm slot
instead (``zerostart.serve.slot``): a worker that pre-imports, passes a health
check, and waits to be assigned a model by the pool.

The first statement starts the start-up clock; everything this module imports
after it is timed as the ``imports`` phase. argparse, not click: it is already
in the standard library and costs a few milliseconds.
"""

from zerostart.serve.startup import Startup

# The collector pauses for start-up when this runs as the program (not when the CLI or a
# test imports it), and resumes once the model is loaded (startup.py).
_STARTUP = Startup.begin(pause_gc=__name__ == "__main__")

import argparse  # noqa: E402  (after the clock starts, on purpose)
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

# The worker never speaks TLS (it listens behind a gateway); asyncio imports ssl only to
# offer it and treats ImportError as "no TLS". Marking ssl absent saves ~15 ms of every
# cold start here and keeps OpenSSL out of the process (images leave it out anyway).
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

from zerostart.errors import ZerostartError  # noqa: E402
from zerostart.serve.config import ServerConfig  # noqa: E402

LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
HELP_WIDTH_CHARS = 100


class _Formatter(argparse.HelpFormatter):
    """A fixed width: argparse's default asks shutil for the terminal size, and importing
    shutil drags bz2, lzma and zlib onto the cold-start path."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=HELP_WIDTH_CHARS)


def _bool(value: str) -> bool:
    """``true``/``false`` (any case), as TEI's clap flags read them."""
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return lowered == "true"


def parse_args(
    argv: list[str] | None = None, prog: str = "python -m zerostart.serve"
) -> argparse.Namespace:
    d = ServerConfig()
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Serve a zerostart bundle over HTTP: POST /predict, /embed, /tokens (the routes "
            "its task serves), GET /health, /info, /metrics."
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("bundle", help="bundle folder made by `zerostart convert`")
    p.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=d.port, help="0 picks a free port (default %(default)s)"
    )
    p.add_argument(
        "--verify",
        choices=("fast", "full", "none"),
        default="fast",
        help="bundle integrity check (default %(default)s)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        help="sequences per engine call (default %(default)s)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=d.max_batch_tokens,
        help="tokens per engine call (default %(default)s)",
    )
    p.add_argument(
        "--max-client-batch-size",
        type=int,
        default=d.max_client_batch_size,
        help="inputs allowed in one request; more is 422 Validation, as in TEI"
        " (default %(default)s)",
    )
    auto_truncate = d.auto_truncate
    if os.environ.get("AUTO_TRUNCATE"):
        try:
            auto_truncate = _bool(os.environ["AUTO_TRUNCATE"])
        except argparse.ArgumentTypeError as exc:
            p.error(f"environment variable AUTO_TRUNCATE: {exc}")
    p.add_argument(
        "--auto-truncate",
        nargs="?",
        type=_bool,
        const=True,
        default=auto_truncate,
        metavar="true|false",
        help=(
            "cut inputs over the model's length when a request does not send `truncate` "
            "(`--auto-truncate false`: refuse them with 422); env AUTO_TRUNCATE, as TEI "
            "(default %(default)s, TEI's since 1.9)"
        ),
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=d.max_queue,
        help="queued requests before 429 (default %(default)s)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=d.max_body_bytes,
        help="request body limit (default %(default)s)",
    )
    p.add_argument(
        "--max-header-bytes",
        type=int,
        default=d.max_header_bytes,
        help="request head limit (default %(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help="open connections (default %(default)s)",
    )
    p.add_argument(
        "--max-connections-per-client",
        type=int,
        default=d.max_connections_per_client,
        help="open connections from one client address; 503 above (default %(default)s)",
    )
    p.add_argument(
        "--max-trailer-bytes",
        type=int,
        default=d.max_trailer_bytes,
        help="chunked trailer section, dropped; 431 above (default %(default)s)",
    )
    p.add_argument(
        "--body-deadline",
        type=float,
        default=d.body_deadline_s,
        help="seconds to receive a whole request body (default %(default)s)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=d.header_timeout_s,
        help="seconds to receive a request head (default %(default)s)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=d.body_timeout_s,
        help="longest pause inside a request body, seconds (default %(default)s)",
    )
    p.add_argument(
        "--keepalive-timeout",
        type=float,
        default=d.keepalive_timeout_s,
        help="idle keep-alive seconds (default %(default)s)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=d.drain_timeout_s,
        help="seconds to finish in-flight work on SIGTERM (default %(default)s)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("API_KEY") or None,
        help="require Authorization: Bearer KEY on every route but /health (env API_KEY, as TEI)",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        max_client_batch_size=args.max_client_batch_size,
        auto_truncate=args.auto_truncate,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        max_header_bytes=args.max_header_bytes,
        max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client,
        max_trailer_bytes=args.max_trailer_bytes,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        body_deadline_s=args.body_deadline,
        keepalive_timeout_s=args.keepalive_timeout,
        drain_timeout_s=args.drain_timeout,
        api_key=args.api_key,
    )


LIBCUDA = "libcuda.so.1"


def prepare_for_gpu(bundle: str) -> bool:
    """For a GPU bundle, before numpy is imported: one OpenBLAS thread, and the CUDA context
    started on a thread of its own. True when the bundle is a GPU bundle.

    numpy's OpenBLAS starts a thread per core at import, and a GPU worker never
    calls BLAS: on the 16-core H200 machine one thread cut exec -> first answer from
    a median of 0.61 s to 0.53 s (bench/results/gpu_h200.json,
    ``exec_runs_five_machines_s``). A value the user set wins. An unreadable
    manifest is left to the loader's error.
    """
    import json

    try:
        with open(os.path.join(bundle, "manifest.json"), "rb") as f:
            device = json.load(f).get("device")
    except (OSError, ValueError, AttributeError):
        return False
    if device != "cuda":
        return False
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    prewarm_cuda()
    return True


def prewarm_cuda(library: str = LIBCUDA, device: int = 0) -> threading.Thread:
    """Initialise the driver and retain ``device``'s primary context on a daemon thread.

    Creating the context costs ~0.11 s (H200, the engine's ``startup_phases``) inside
    the driver, where ctypes has released the GIL, so it overlaps the worker's imports
    (numpy and the pipeline: ~0.26 s there); the engine's own retain then finds the
    context made (the driver counts retains; this one is held for the process's life,
    as the engine holds its own). Raw ctypes on purpose: importing
    ``zerostart.engine.cuda`` would import numpy first. Any failure is silent here:
    the engine reports it with its hint. Not yet measured on a GPU.
    """
    import ctypes

    def run() -> None:
        try:
            lib = ctypes.CDLL(library)
        except OSError:
            return
        if lib.cuInit(0) != 0:
            return
        dev = ctypes.c_int()
        if lib.cuDeviceGet(ctypes.byref(dev), device) != 0:
            return
        ctx = ctypes.c_void_p()
        lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)

    thread = threading.Thread(target=run, name="cuda-prewarm", daemon=True)
    thread.start()
    return thread


def main(
    argv: list[str] | None = None, prog: str = "python -m zerostart.serve", *, debug: bool = False
) -> int:
    """The worker; ``debug`` (``zerostart --debug serve``) re-raises errors with their traceback."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--slot" or a.startswith("--slot=") for a in argv):
        from zerostart.serve.slot import main as slot_main  # a warm slot (zerostart.platform)

        return slot_main(argv, prog, _STARTUP)
    args = parse_args(argv, prog)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    prepare_for_gpu(args.bundle)
    try:
        config = config_from_args(args)
        from zerostart.serve.server import run

        run(args.bundle, config, verify=args.verify, startup=_STARTUP)
    except ZerostartError as exc:
        if debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
