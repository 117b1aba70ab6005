"""The gateway: one HTTP endpoint for many models, each scaled from zero and back.

Theory of operation
-------------------
This module is the asyncio *driver*: it routes, forwards, runs starts, probes
and timers, and asks the I/O-free core (``_core.py``: admission, retries,
replica lifecycle, reconciliation, with a fake clock in its unit tests) what to
do with each event. Requests arrive on the worker's own HTTP layer
(``serve/http.py``: httptools over asyncio, its limits and timeouts);
:meth:`Gateway.handle` routes them:

* ``/models/NAME/PATH`` (or any path with ``Host: NAME.<anything>``) goes to
  a replica of model NAME as ``PATH``; ``/health``, ``/status`` and
  ``/metrics`` are the gateway's own.
* A request takes a free *seat* (a replica with fewer than ``concurrency``
  requests in flight, the least loaded first). With none free it joins the
  model's FIFO queue (bounded by ``max_queue``: a full queue answers 429), and
  waits up to ``queue_timeout`` (then 503 with ``Retry-After``). A request
  that finds nothing running or starting triggers exactly one start; every
  other request queues behind it, and each seat that frees up or comes up goes
  to the head of the queue at once.
* Every ``tick`` the autoscaler (``autoscaler.py``, pure) sees each model's
  concurrency and says how many replicas it wants; the gateway starts the
  difference or drains the surplus (a draining replica takes no new requests
  and is stopped when its last one is answered).
* A replica whose connection fails (refused, reset, closed before an answer),
  whose process exited or stays stopped (``/proc/PID/stat`` state ``Z``/``T``),
  or that misses its health probes (``GET /health`` with a deadline, sent
  only to a replica that answered nothing for a while) is taken out, killed if
  it still runs, counted (``replicas_replaced_total`` by reason, ``/status``
  ``replaced``), and replaced if the model still wants it; the decisions are
  ``liveness.py``'s, pure and driven by each tick. Its requests are **re-sent once** (to another
  replica, or to the replacement once it is ready): inference is an idempotent
  read of a model, so a duplicate has no effect beyond its cost. A second
  failure answers 502. A replica that answers too slowly (``upstream_timeout``)
  gets 504 and is not retried: the request may be what makes it slow.
* A start that fails (a corrupt bundle) answers the requests waiting for it
  with 502 naming the model and the worker's own complaint; further starts of
  that model back off (1 s, doubling to 60 s) and requests meanwhile get the
  same 502 at once, so a broken model costs nothing to the others.

Bodies: a request body is held whole, up to ``max_body_bytes`` (413 above,
answered from Content-Length before reading it), so that it can be re-sent
once. A response body that comes with its head is forwarded whole; a longer
one is streamed to the client as the replica sends it, with backpressure
both ways (``upstream.py``; at most ~256 KiB buffered per request), its seat
held until the last byte. A response without a Content-Length is held up to
``max_body_bytes`` (502 above).

Every answer from a model carries ``zerostart-cold-start`` (``none``, or the
start path and how long the request waited: ``cold_boot;wait_ms=212.4``) and
a standard ``server-timing`` header with the queue wait and, after a cold
start, its phases.

Auth: with a key set (the model's own, else the gateway's), a request needs
``Authorization: Bearer KEY`` (compared with :func:`hmac.compare_digest`), else
401. ``/status`` and ``/metrics`` need the gateway's key when it has one;
``/health`` never does. Keys never reach a log line or ``/status``. The key,
``Host`` and path are the request head's as the HTTP layer read them
(``serve/_h1core.py``): trailers dropped, two keys or hosts refused with 400,
the path canonical (``/models/a/../b/x`` is b's), so what is authorised is what
is routed and forwarded. Host names are case-insensitive.

Pool sizing: every model request counts as an arrival and every replica start
as a start (``sizing.Recent``, a sliding window); with ``[pool] sizing = "lp"``
a ``sizing.PoolSizer`` task re-plans the warm pool's size on a schedule
(``/status`` "pool_sizing", ``/metrics`` ``zerostart_pool_*``).

Shutdown (SIGTERM/SIGINT or :meth:`begin_shutdown`): stop accepting, answer
what is in flight or queued (up to ``drain_timeout``), then stop every
replica and start in progress and close the starter (its slots).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from zerostart.platform._core import (
    Action,
    Failure,
    GatewayCore,
    Grant,
    KillReplica,
    Probe,
    Reject,
    StartReplica,
    StopReplica,
)
from zerostart.platform._probe import probe
from zerostart.platform._replies import (
    FORWARDED_REQUEST_HEADERS,
    FORWARDED_RESPONSE_HEADERS,
    Refused,
    Relay,
    authorized,
    json_response,
    reply_response,
    timing_headers,
    unauthorized,
)
from zerostart.platform._state import ModelRuntime, Seat, StartRecord
from zerostart.platform._types import Replica, Starter
from zerostart.platform.errors import PlatformError, StartError
from zerostart.platform.liveness import LivenessPolicy, proc_state
from zerostart.platform.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from zerostart.platform.metrics import GatewayMetrics, register_gauges
from zerostart.platform.sizing import PoolSizer, Recent
from zerostart.platform.sizing import register_gauges as register_sizing_gauges
from zerostart.platform.status_page import CONTENT_TYPE as PAGE_TYPE
from zerostart.platform.status_page import HEADERS as PAGE_HEADERS
from zerostart.platform.status_page import PAGE as STATUS_PAGE
from zerostart.platform.status_page import wants_html
from zerostart.platform.upstream import (
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
    UpstreamTooLarge,
)
from zerostart.platform_toml import PlatformConfig
from zerostart.serve.config import ServerConfig
from zerostart.serve.http import ListeningHost, Request, Response, error_response

log = logging.getLogger("zerostart.platform")


class Gateway(ListeningHost):
    """Serve ``config.models`` through replicas from ``starter``; see the module docstring."""

    def __init__(
        self,
        config: PlatformConfig,
        starter: Starter,
        *,
        worker_key: str | None = None,
        liveness: LivenessPolicy | None = None,
    ) -> None:
        self.metrics = GatewayMetrics()
        now = time.monotonic()
        # before ListeningHost.__init__, which sets ``draining`` (the core's)
        self.core = GatewayCore(config, now, metrics=self.metrics, liveness=liveness)
        super().__init__()
        self.platform = config
        self.liveness = self.core.liveness
        # sent to replicas, which were started with it as their API_KEY (never the client's)
        self._worker_auth = [("authorization", f"Bearer {worker_key}")] if worker_key else []
        g = config.gateway
        self.config = ServerConfig(  # what serve/http.py's connections read
            host=g.host,
            port=g.port,
            max_body_bytes=g.max_body_bytes,
            max_header_bytes=g.max_header_bytes,
            max_connections=g.max_connections,
            max_connections_per_client=g.max_connections_per_client,
            max_trailer_bytes=g.max_trailer_bytes,
            header_timeout_s=g.header_timeout_s,
            body_timeout_s=g.body_timeout_s,
            body_deadline_s=g.body_deadline_s,
            keepalive_timeout_s=g.keepalive_timeout_s,
            drain_timeout_s=g.drain_timeout_s,
        )
        self.starter = starter
        self.models = self.core.models
        register_gauges(self.metrics, self.models, self.pool_status)
        self.recent = Recent(config.pool.demand_window_s, now)
        self.sizer: PoolSizer | None = None
        self._sizer_task: asyncio.Task[None] | None = None
        register_sizing_gauges(
            self.metrics, list(self.models), self.recent, self._pool_sizes, lambda: self.sizer
        )
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._waiters: dict[int, asyncio.Future[Seat]] = {}  # the core's queued ids
        self._starts: dict[int, asyncio.Task[None]] = {}  # the core's start ids

    @property  # type: ignore[override]
    def draining(self) -> bool:
        return self.core.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.core.draining = value

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Listen, start the autoscaler, and bring each model up to ``min_replicas``."""
        loop = asyncio.get_running_loop()
        try:
            await self._listen()
        except OSError as exc:
            raise PlatformError(
                f"the gateway cannot listen on {self.config.host}:{self.config.port}: "
                f"{exc.strerror or exc}",
                hint="set [gateway] port (or --port) to a free port",
            ) from exc
        await self.starter.open()  # a warm pool starts filling
        pool = self.starter.pool
        if self.platform.pool.sizing == "lp" and pool is not None:
            self.sizer = PoolSizer(self.platform, pool, self.recent)
            self._sizer_task = loop.create_task(self.sizer.run(), name="pool-sizer")
        self._apply(self.core.open())
        self._ticker = loop.create_task(self._autoscale())

    def _shutdown_started(self) -> None:
        log.info("event=shutdown connections=%d", len(self.connections))

    def _busy(self) -> bool:
        if any(c.busy for c in self.connections):
            return True
        return any(rt.in_flight or rt.waiters for rt in self.models.values())

    async def _drain(self) -> None:
        await self._drain_connections(self._busy)
        if self._busy():
            log.warning("event=drain_timeout: answering what is left with errors")
        await self.stop_all()
        await self._close_connections()
        log.info("event=stopped")

    async def stop_all(self) -> None:
        """Stop the autoscaler, cancel starts, stop every replica, close the starter."""
        if self._ticker is not None:
            self._ticker.cancel()
        if self._sizer_task is not None:
            self._sizer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sizer_task
        starts = list(self._starts.values())
        for task in starts:
            task.cancel()
        await asyncio.gather(*starts, return_exceptions=True)
        stops = []
        for action in self.core.shutdown(time.monotonic()):
            if isinstance(action, StopReplica):
                self._close_seat(action.seat)
                stops.append(action.seat.replica.stop(action.timeout_s))
            else:
                self._apply([action])
        await asyncio.gather(*stops, *self._background, return_exceptions=True)
        await self.starter.close()

    # -- actions -------------------------------------------------------------------
    def _apply(self, actions: list[Action] | tuple[Action, ...]) -> None:
        """Carry out the core's actions, in order."""
        for action in actions:
            if isinstance(action, Grant):
                fut = self._waiters.pop(action.waiter, None)
                if fut is None or fut.done():  # its client left as the seat came: give it back
                    rt = self.models[action.model]
                    self._apply(self.core.release(rt, action.seat, time.monotonic()))
                else:
                    fut.set_result(action.seat)
            elif isinstance(action, Reject):
                fut = self._waiters.pop(action.waiter, None)
                if fut is not None and not fut.done():
                    fut.set_exception(Refused(reply_response(action.reply)))
            elif isinstance(action, StartReplica):
                rt = self.models[action.model]
                task = asyncio.get_running_loop().create_task(
                    self._run_start(rt, action.start, action.reason)
                )
                self._starts[action.start] = task
                task.add_done_callback(self._start_done(action.start))
            elif isinstance(action, StopReplica):
                seat = action.seat
                log.info(
                    "model=%s event=stop pid=%d reason=%s",
                    action.model,
                    seat.replica.pid,
                    action.reason,
                )
                self._close_seat(seat)
                self._background_task(seat.replica.stop(action.timeout_s))
            elif isinstance(action, KillReplica):
                seat = action.seat
                log.warning(
                    "model=%s event=replica_failed pid=%d exit=%s reason=%s: %s",
                    action.model,
                    seat.replica.pid,
                    seat.replica.returncode,
                    action.reason,
                    action.why,
                )
                self._close_seat(seat)
                seat.replica.kill()
                self._background_task(seat.replica.stop(1.0))  # reaps it
            elif isinstance(action, Probe):
                self._background_task(self._probe(self.models[action.model], action.seat))

    def _start_done(self, start: int) -> Any:
        return lambda _task: self._starts.pop(start, None)

    @staticmethod
    def _close_seat(seat: Seat) -> None:
        if seat.pool is not None:
            seat.pool.close()

    def _background_task(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- routing -------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        path = request.path
        if path.startswith("/models/"):
            name, _, rest = path[8:].partition("/")
            query = request.target[len(path) :]
            return await self._model_request(request, name, "/" + rest + query)
        # Host names are case-insensitive (RFC 9110 section 4.2.3): A.x is model a.
        label = request.headers.get("host", "").partition(":")[0].lower().partition(".")
        if label[1] and label[0] in self.models:
            return await self._model_request(request, label[0], request.target)
        if path == "/health":
            if self.draining:
                return error_response(503, "the gateway is shutting down", "Unhealthy")
            return json_response({"status": "ready"})
        if path in ("/status", "/metrics"):
            if request.method != "GET":
                return error_response(405, f"{path} accepts GET only", "MethodNotAllowed")
            if not authorized(request, self.platform.gateway.api_key):
                return unauthorized("the gateway")
            if path == "/status":
                return json_response(self.status())
            return Response(200, self.metrics.render(), content_type=METRICS_CONTENT_TYPE)
        if (
            path == "/"
            and request.method == "GET"
            and wants_html(request.headers.get("accept", ""))
        ):
            return Response(200, STATUS_PAGE, content_type=PAGE_TYPE, headers=list(PAGE_HEADERS))
        models = ", ".join(sorted(self.models))
        return error_response(
            404,
            f"no route {path!r}; use /models/NAME/... (models: {models}), /health, /status, /metrics",
            "NotFound",
        )

    async def _model_request(self, request: Request, name: str, target: str) -> Response:
        rt = self.models.get(name)
        if rt is None:
            return error_response(
                404, f"no model {name!r}; models: {', '.join(sorted(self.models))}", "NotFound"
            )
        key = rt.config.api_key or self.platform.gateway.api_key
        if not authorized(request, key):
            response = unauthorized(f"model {name!r}")
        else:
            try:
                response = await self._forward(rt, request, target)
            except Refused as refused:
                response = refused.response
        self.metrics.requests.inc(name, str(response.status))
        self.metrics.duration.observe(time.perf_counter() - request.received_at, name)
        return response

    # -- forwarding ----------------------------------------------------------------
    async def _forward(self, rt: ModelRuntime, request: Request, target: str) -> Response:
        name = rt.config.name
        now = time.monotonic()
        self.core.arrive(rt, now)
        self.recent.arrival(name, now)
        headers = [
            (k, request.headers[k]) for k in FORWARDED_REQUEST_HEADERS if k in request.headers
        ]
        headers += self._worker_auth
        deadline = request.received_at + rt.config.queue_timeout_s
        waited_s = 0.0
        cold: StartRecord | None = None
        gw = self.platform.gateway
        sends = 0
        while True:
            seat, wait_s, seat_cold = await self._acquire(rt, deadline)
            waited_s += wait_s
            cold = cold or seat_cold
            sends += 1
            assert seat.pool is not None  # set when the seat was made
            try:
                up = await seat.pool.request(
                    request.method,
                    target,
                    headers,
                    request.body,
                    timeout_s=gw.upstream_timeout_s,
                    max_body_bytes=gw.max_body_bytes,
                )
            except UpstreamError as exc:
                outcome = self.core.upstream_failed(
                    rt, seat, _failure(exc), sends, str(exc), time.monotonic()
                )
                self._apply(outcome.actions)
                if outcome.resend:
                    continue
                assert outcome.reply is not None
                return reply_response(outcome.reply)
            except BaseException:
                self._release(rt, seat)
                raise
            break
        self.core.answered(seat, time.monotonic())
        content_type = "application/json"
        out: list[tuple[str, str]] = []
        for k, v in up.headers:
            if k == "content-type":
                content_type = v
            elif k in FORWARDED_RESPONSE_HEADERS:
                out.append((k, v))
        out += timing_headers(waited_s, cold)
        if up.stream is None:
            self._release(rt, seat)
            return Response(up.status, up.body, content_type=content_type, headers=out)
        # A long body: its seat stays taken until the last byte is written (or the client left).
        relay = Relay(up.stream, lambda: self._release(rt, seat))
        return Response(up.status, up.body, content_type=content_type, headers=out, stream=relay)

    async def _acquire(
        self, rt: ModelRuntime, deadline: float
    ) -> tuple[Seat, float, StartRecord | None]:
        now = time.monotonic()
        admission = self.core.admit(rt, now)
        if admission.seat is not None:
            return admission.seat, 0.0, None
        if admission.reply is not None:
            raise Refused(reply_response(admission.reply))
        waiter = admission.waiter
        assert waiter is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Seat] = loop.create_future()
        self._waiters[waiter] = fut
        self._apply(admission.actions)
        t0 = time.perf_counter()
        timer = loop.call_later(max(0.0, deadline - t0), self._expire, rt, waiter)
        try:
            seat = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(rt, fut.result())  # a seat came as the client left
            raise
        finally:
            timer.cancel()
            if self._waiters.pop(waiter, None) is not None:  # still queued: its client left
                self.core.withdraw(rt, waiter, time.monotonic())
        cold = seat.start if seat.ready_at >= now else None
        wait = time.perf_counter() - t0
        self.metrics.queue_wait.observe(wait, rt.config.name)
        return seat, wait, cold

    def _expire(self, rt: ModelRuntime, waiter: int) -> None:
        fut = self._waiters.pop(waiter, None)
        if fut is not None and not fut.done():
            reply = self.core.give_up(rt, waiter, time.monotonic())
            fut.set_exception(Refused(reply_response(reply)))

    def _release(self, rt: ModelRuntime, seat: Seat) -> None:
        self._apply(self.core.release(rt, seat, time.monotonic()))

    # -- starts ----------------------------------------------------------------------
    async def _run_start(self, rt: ModelRuntime, start: int, reason: str) -> None:
        name = rt.config.name
        try:
            replica = await self.starter.start(rt.config)
        except StartError as exc:
            self._start_failed(rt, start, exc)
            return
        except Exception as exc:  # a bug in a starter: same handling, with the traceback
            log.error("model=%s event=start_bug", name, exc_info=exc)
            self._start_failed(rt, start, StartError(name, f"internal error: {exc!r}"))
            return
        if start not in rt.starts:  # shut down meanwhile (the core forgot the start)
            self._background_task(replica.stop(1.0))
            return
        fallbacks = [{"path": f.path, "reason": f.reason} for f in replica.fallbacks]
        record = StartRecord(
            replica.start_path, replica.total_ms, replica.phases_ms, fallbacks, time.time()
        )
        for f in replica.fallbacks:
            self.metrics.fallbacks.inc(name, f.path)
            log.info("model=%s event=start_fallback path=%s reason=%s", name, f.path, f.reason)
        self.metrics.cold_starts.inc(name, replica.start_path)
        self.metrics.phases.observe(replica.total_ms / 1e3, name, "total")
        for phase, ms in replica.phases_ms.items():
            self.metrics.phases.observe(ms / 1e3, name, phase)
        now = time.monotonic()
        self.recent.started(name, replica.start_path, replica.total_ms / 1e3, now)
        seat, actions = self.core.started(rt, start, replica, record, now)
        # the readiness check's connection carries the first request (one connect, not two)
        seat.pool = replica.connections or UpstreamPool(replica.host, replica.port)
        log.info(
            "model=%s event=ready path=%s pid=%d port=%d start_ms=%.1f",
            name,
            replica.start_path,
            replica.pid,
            replica.port,
            replica.total_ms,
        )
        self._apply(actions)

    def _start_failed(self, rt: ModelRuntime, start: int, exc: StartError) -> None:
        log.error(
            "model=%s event=start_failed path=%s reason=%s", rt.config.name, exc.path, exc.problem
        )
        self._apply(self.core.start_failed(rt, start, exc, time.monotonic()))

    # -- liveness and autoscaling -------------------------------------------------------
    async def _probe(self, rt: ModelRuntime, seat: Seat) -> None:
        """``GET /health`` on a fresh connection, with the policy's deadline."""
        replica = seat.replica
        pool = UpstreamPool(replica.host, replica.port, max_idle=0)
        try:
            why = await probe(pool, self.liveness.probe_timeout_s)
        finally:
            pool.close()
        self._apply(self.core.probe_done(rt, seat, why, time.monotonic()))

    async def _autoscale(self) -> None:
        tick = self.platform.autoscaler.tick_s
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for rt in self.models.values():
                try:
                    self.reconcile(rt, now)
                except Exception as exc:  # a bug must not stop scaling for every model
                    log.error("model=%s event=autoscaler_bug", rt.config.name, exc_info=exc)

    def reconcile(self, rt: ModelRuntime, now: float) -> None:
        """One autoscaler tick for ``rt``: read its replicas' process states, apply the core's
        decisions (``GatewayCore.tick``)."""
        states = {s: _state_of(s.replica) for s in rt.seats}
        self._apply(self.core.tick(rt, now, states))

    # -- observability -----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``GET /status``: every model's state (``ModelRuntime.status``) and the warm pool's."""
        now = time.monotonic()
        key = self.platform.gateway.api_key
        counts = self.metrics.cold_starts.by_first_label()
        models = {
            name: rt.status(
                now, cold_starts=counts.get(name, {}), auth=bool(rt.config.api_key or key)
            )
            for name, rt in self.models.items()
        }
        out: dict[str, Any] = {"draining": self.draining, "models": models}
        if (pool := self.pool_status()) is not None:
            out["starter"] = pool
        out["demand"] = self.recent.status(now, list(self.models))
        out["requests"] = self.metrics.requests.by_first_label()  # {model: {status: count}}
        out["pool_sizing"] = (
            self.sizer.status()
            if self.sizer is not None
            else {"sizing": self.platform.pool.sizing, "sizes": dict(self._pool_sizes())}
        )
        return out

    def _pool_sizes(self) -> dict[str, int]:
        pool = self.starter.pool
        return dict(pool.sizes) if pool is not None else {}

    def pool_status(self) -> dict[str, Any] | None:
        return self.starter.status()  # the warm pool's slots, if the starter has one


def _failure(exc: UpstreamError) -> Failure:
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamTooLarge):
        return "too_large"
    return "connection"


def _state_of(replica: Replica) -> str | None:
    return proc_state(replica.pid) if replica.is_alive() else None


async def serve(config: PlatformConfig, starter: Starter, *, worker_key: str | None = None) -> None:
    """Run a gateway until SIGTERM or SIGINT, then drain, stop every replica, and return.

    Prints ``zerostart: gateway on http://HOST:PORT ...`` on stderr once listening.
    A second signal stops waiting for in-flight requests.
    """
    import signal
    import sys

    loop = asyncio.get_running_loop()
    gateway = Gateway(config, starter, worker_key=worker_key)
    try:
        await gateway.start()
    except BaseException:
        await starter.close()
        raise
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.begin_shutdown)
    names = ", ".join(sorted(config.models))
    print(
        f"zerostart: gateway on http://{gateway.config.host}:{gateway.port} serving {names}",
        file=sys.stderr,
        flush=True,
    )
    try:
        await gateway.serve_until_shutdown()
    finally:
        if not gateway.draining:  # cancelled from outside: still stop everything
            gateway.draining = True
            await gateway.stop_all()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
