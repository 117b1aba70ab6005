"""The worker: a listening socket, its connections, the batcher, and a clean exit.

Shutdown (SIGTERM or SIGINT, or :meth:`Server.begin_shutdown`):

1. stop accepting (the listening socket closes) and answer /health with 503;
2. close idle keep-alive connections; busy ones get their answers, each with
   ``connection: close``; requests already queued for the engine still run;
3. when nothing is in flight (or ``drain_timeout_s`` has passed, or a second
   signal arrives) stop the batcher thread, close what is left, return.

Runtime module: standard library and httptools; the pipeline is imported lazily
by :func:`run` so that its import time is measured as a phase.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

from zerostart.errors import ServeError
from zerostart.serve.app import App, PipelineLike
from zerostart.serve.batcher import Batcher
from zerostart.serve.config import ServerConfig
from zerostart.serve.http import DRAIN_POLL_S, ListeningHost, Request, Response
from zerostart.serve.metrics import Metrics
from zerostart.serve.startup import Startup

log = logging.getLogger("zerostart.serve")


class Server(ListeningHost):
    """Serves one pipeline; use ``await start()``, then ``await serve_until_shutdown()``."""

    def __init__(
        self,
        pipeline: PipelineLike,
        config: ServerConfig | None = None,
        *,
        startup: Startup | None = None,
    ) -> None:
        super().__init__()
        self.config = config or ServerConfig()
        self.metrics = Metrics()
        self.batcher = Batcher(
            pipeline.execute,
            self.config.limits,
            max_queue=self.config.max_queue,
            on_batch=self.metrics.record_batch,
        )
        self.startup = startup or Startup(interpreter_s=None)
        self.app = App(pipeline, self.config, self.batcher, self.metrics, self.startup)
        self.metrics.gauge(
            "queue_depth", "Requests waiting for the engine.", lambda: self.batcher.depth
        )
        self.metrics.gauge(
            "in_flight_requests", "Inference requests being processed.", lambda: self.app.in_flight
        )
        self.metrics.gauge(
            "open_connections", "Open client connections.", lambda: len(self.connections)
        )
        self.metrics.gauge(
            "engine_calls_total",
            "Engine forward calls (one per batch unless a batch exceeds the engine's limit).",
            lambda: getattr(pipeline, "engine_calls", 0),
            kind="counter",
        )

    def handle(self, request: Request) -> Any:
        return self.app.handle(request)

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Start the batcher and listen; the worker is ready when this returns."""
        self.batcher.start(asyncio.get_running_loop())
        try:
            await self._listen()
        except OSError as exc:
            self.batcher.stop()
            raise ServeError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}",
                hint="pick another --port, or stop what is using this one",
            ) from exc
        self.startup.mark("listening")
        self.metrics.set_phases(self.startup.phases)
        self.app.ready = True

    def _shutdown_started(self) -> None:
        log.info("shutting down: draining %d connection(s)", len(self.connections))
        self.app.ready = False

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = await self._drain_connections(
            lambda: any(c.busy for c in self.connections) or bool(self.batcher.depth)
        )
        left = sum(c.busy for c in self.connections)
        if left:
            log.warning("drain ended with %d connection(s) still busy; closing them", left)
        # Stop without blocking the loop (and without asyncio.to_thread, which would
        # import concurrent.futures.thread and queue for this one call).
        self.batcher.stop(timeout_s=0)
        while self.batcher.alive and not self._force and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if self.batcher.alive:
            log.warning("the engine did not finish its batch within the drain timeout")
        await self._close_connections()
        log.info("stopped")


async def serve(pipeline: PipelineLike, config: ServerConfig, startup: Startup) -> None:
    """Run a server for ``pipeline`` until SIGTERM or SIGINT, then drain and return."""
    loop = asyncio.get_running_loop()
    server = Server(pipeline, config, startup=startup)
    await server.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.begin_shutdown)
    total_ms = startup.total_s * 1e3
    print(f"zerostart: ready on {server.url} in {total_ms:.0f} ms", file=sys.stderr, flush=True)
    phases = " ".join(f"{k}={v * 1e3:.1f}ms" for k, v in startup.phases.items())
    log.info("start-up (%s): %s", startup.mode, phases)
    try:
        await server.serve_until_shutdown()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run(
    bundle_dir: str | os.PathLike[str],
    config: ServerConfig | None = None,
    *,
    verify: str = "fast",
    startup: Startup | None = None,
) -> None:
    """Load the bundle, warm up, serve until SIGTERM/SIGINT; returns after a clean drain.

    Raises :class:`~zerostart.errors.ZerostartError` subclasses (bad bundle,
    port in use); never exits the process.
    """
    startup = startup or Startup.begin()
    from zerostart.pipeline import Pipeline  # the engine and numpy: measured as "imports"

    startup.mark("imports")
    config = config or ServerConfig()
    pipeline = Pipeline.load(
        bundle_dir, verify=verify, limits=config.limits, auto_truncate=config.auto_truncate
    )
    startup.add(pipeline.phases)
    pipeline.warmup()
    startup.mark("warmup")
    startup.resume_gc()  # the entry point paused it for start-up
    asyncio.run(serve(pipeline, config, startup))


__all__ = ["Response", "Server", "run", "serve"]
