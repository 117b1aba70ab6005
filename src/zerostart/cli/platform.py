"""``zerostart up platform.toml``: the gateway, its autoscaler and start paths, until Ctrl-C.

Wired into zerostart.cli by ``add_subcommands``. Errors are raised as
``ZerostartError`` subclasses; the main CLI shows them.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys

LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def _cmd_up(args: argparse.Namespace) -> int:
    import asyncio

    from zerostart.platform.gateway import serve
    from zerostart.platform.sources import check_sources, require_sources
    from zerostart.platform.starter import default_starter
    from zerostart.platform_toml import load

    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    config = load(args.config)
    if args.check:
        checks = check_sources(config)
        for check in checks:
            print(check.line(), file=sys.stdout if check.ok else sys.stderr)
        bad = [c.model for c in checks if not c.ok]
        if bad:
            print(
                f"zerostart up: error: {args.config}: {len(bad)} of {len(checks)} model(s) "
                f"cannot start ({', '.join(bad)})",
                file=sys.stderr,
            )
            return 1
        pool = config.pool
        print(
            f"{args.config}: ok: {len(config.models)} model(s) "
            f"({', '.join(sorted(config.models))}); pool sizing {pool.sizing}, "
            f"cpu {pool.cpu}, cuda {pool.cuda}"
            + (
                f" at most, re-planned every {pool.resolve_interval_s:g} s"
                if pool.sizing == "lp"
                else ""
            )
        )
        return 0
    require_sources(config)  # a missing or damaged source fails here, not at its first request
    gateway = config.gateway
    changes = {}
    if args.host is not None:
        changes["host"] = args.host
    if args.port is not None:
        changes["port"] = args.port
    if args.api_key:
        changes["api_key"] = args.api_key
    if changes:
        from dataclasses import replace

        config = config.new(gateway=replace(gateway, **changes))
    worker_key = _worker_key()
    slot_image = None
    if config.pool.cpu and any(m.source_kind == "image" for m in config.models.values()):
        # The build takes seconds and cleans up in `finally`; SIGTERM's default action
        # would skip that (the gateway installs its own handlers only once it serves).
        from zerostart.cli._signals import sigterm_as_interrupt
        from zerostart.container.runtime import default_cache_dir
        from zerostart.image.slot import build_slot_image  # container slots run this image

        with sigterm_as_interrupt():
            slot_image = str(build_slot_image(default_cache_dir()))
    starter = default_starter(config, worker_key=worker_key, slot_image=slot_image)
    asyncio.run(serve(config, starter, worker_key=worker_key))
    return 0


def _worker_key() -> str:
    """The token the gateway's workers require (see platform/_types.py, "Worker key").

    Kept in ``$XDG_STATE_HOME/zerostart/worker.key`` (default
    ``~/.local/state``; folder 0700, file 0600) so it survives gateway runs: a
    snapshot freezes the key its worker was started with, and a per-run key
    would refuse every snapshot taken before. ``ZEROSTART_WORKER_KEY`` overrides
    it. Where the file cannot be written, a per-run key (snapshots then re-boot).
    """
    if key := os.environ.get("ZEROSTART_WORKER_KEY"):
        return key
    from zerostart.cachedir import state_base

    folder = str(state_base())
    path = os.path.join(folder, "worker.key")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        try:
            with open(path, encoding="ascii") as f:
                key = f.read().strip()
            if key and os.stat(path).st_mode & 0o077 == 0:
                return key
        except FileNotFoundError:
            pass
        key = secrets.token_urlsafe(32)
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key + "\n")
        os.replace(path + ".tmp", path)
        return key
    except OSError as exc:
        logging.getLogger("zerostart.platform").warning(
            "event=worker_key_not_saved path=%s reason=%s", path, exc.strerror or exc
        )
        return secrets.token_urlsafe(32)


def add_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    u = sub.add_parser(
        "up",
        help="run the gateway: many models behind one endpoint, each scaled from zero",
        description=(
            "Serve the models named in platform.toml behind one HTTP endpoint: "
            "/models/NAME/... (or Host: NAME.*) reaches a replica of NAME, started on the first "
            "request and stopped after idle_timeout; GET /status, /metrics, /health. "
            "Ctrl-C (or SIGTERM) drains in-flight requests and stops every replica."
        ),
    )
    u.add_argument("config", help="platform.toml (see docs/platform.md)")
    u.add_argument("--host", help="address to listen on (default: [gateway] host, 127.0.0.1)")
    u.add_argument("--port", type=int, help="port (default: [gateway] port, 8080; 0 picks one)")
    u.add_argument(
        "--api-key",
        default=os.environ.get("API_KEY"),
        help="require Authorization: Bearer KEY on every model (env API_KEY, as in TEI)",
    )
    u.add_argument(
        "--check",
        action="store_true",
        help="check platform.toml and every model's bundle or image, print a summary and exit"
        " (1 when a model cannot start)",
    )
    u.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    u.set_defaults(func=_cmd_up)
