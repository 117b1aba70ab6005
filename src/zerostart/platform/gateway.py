"""The gateway: one HTTP endpoint for many models, each scaled from zero and back.

Theory of operation
-------------------
Requests arrive on the worker's own HTTP layer (``serve/http.py``: httptools
over asyncio, its limits and timeouts); :meth:`Gateway.handle` routes them:

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

from zerostart.paths import redact_paths
from zerostart.platform._replies import (
    FORWARDED_REQUEST_HEADERS,
    FORWARDED_RESPONSE_HEADERS,
    Refused,
    Relay,
    authorized,
    json_response,
    start_failed,
    timing_headers,
    unauthorized,
    unavailable,
)
from zerostart.platform._state import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    ModelRuntime,
    Seat,
    StartRecord,
)
from zerostart.platform._types import Replica, Starter
from zerostart.platform.autoscaler import Scaler
from zerostart.platform.config import PlatformConfig
from zerostart.platform.errors import PlatformError, StartError
from zerostart.platform.liveness import (
    LivenessPolicy,
    answered,
    observe_state,
    probe_due,
    probe_result,
    probe_sent,
    proc_state,
)
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
from zerostart.serve.config import ServerConfig
from zerostart.serve.http import ListeningHost, Request, Response, error_response

log = logging.getLogger("zerostart.platform")

STOP_TIMEOUT_S = 10.0  # a replica's own drain on scale-down before SIGKILL


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
        super().__init__()
        self.platform = config
        self.liveness = liveness or LivenessPolicy()
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
        self.metrics = GatewayMetrics()
        now = time.monotonic()
        self.models = {
            name: ModelRuntime(m, Scaler(m, config.autoscaler, now))
            for name, m in config.models.items()
        }
        register_gauges(self.metrics, self.models, self.pool_status)
        self.recent = Recent(config.pool.demand_window_s, now)
        self.sizer: PoolSizer | None = None
        self._sizer_task: asyncio.Task[None] | None = None
        register_sizing_gauges(
            self.metrics, list(self.models), self.recent, self._pool_sizes, lambda: self.sizer
        )
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

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
        opener = getattr(self.starter, "open", None)  # optional: a warm pool starts filling
        if opener is not None:
            await opener()
        pool = getattr(self.starter, "pool", None)
        if self.platform.pool.sizing == "lp" and pool is not None:
            self.sizer = PoolSizer(self.platform, pool, self.recent)
            self._sizer_task = loop.create_task(self.sizer.run(), name="pool-sizer")
        for rt in self.models.values():
            for _ in range(rt.config.min_replicas):
                self._start_replica(rt, "min")
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
        starts = [t for rt in self.models.values() for t in rt.starts]
        for task in starts:
            task.cancel()
        await asyncio.gather(*starts, return_exceptions=True)
        stops = []
        for rt in self.models.values():
            for seat in rt.seats:
                rt.retire(seat, time.monotonic())
                stops.append(seat.replica.stop(STOP_TIMEOUT_S))
            rt.seats.clear()
            while rt.waiters:
                fut = rt.waiters.popleft()
                if not fut.done():
                    fut.set_exception(Refused(unavailable("the gateway is shutting down")))
        await asyncio.gather(*stops, *self._background, return_exceptions=True)
        await self.starter.close()

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
        rt.scaler.request(now)
        self.recent.arrival(name, now)
        headers = [
            (k, request.headers[k]) for k in FORWARDED_REQUEST_HEADERS if k in request.headers
        ]
        headers += self._worker_auth
        deadline = request.received_at + rt.config.queue_timeout_s
        waited_s = 0.0
        cold: StartRecord | None = None
        gw = self.platform.gateway
        for attempt in (0, 1):
            seat, wait_s, seat_cold = await self._acquire(rt, deadline)
            waited_s += wait_s
            cold = cold or seat_cold
            try:
                up = await seat.pool.request(
                    request.method,
                    target,
                    headers,
                    request.body,
                    timeout_s=gw.upstream_timeout_s,
                    max_body_bytes=gw.max_body_bytes,
                )
            except UpstreamTooLarge as exc:
                self._release(rt, seat)
                return error_response(502, f"model {name!r}: {exc}", "Backend")
            except UpstreamTimeout as exc:
                self._release(rt, seat)
                return error_response(504, f"model {name!r}: {exc}", "Timeout")
            except UpstreamError as exc:
                self._release(rt, seat)
                self._seat_failed(rt, seat, str(exc), "connection")
                if attempt == 0:
                    self.metrics.retries.inc(name)
                    continue
                return error_response(
                    502,
                    f"model {name!r}: replica failed twice, last: {redact_paths(str(exc))}",
                    "Backend",
                )
            except BaseException:
                self._release(rt, seat)
                raise
            break
        seat.health = answered(seat.health, time.monotonic())
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

    def _pick(self, rt: ModelRuntime) -> Seat | None:
        best = None
        limit = rt.config.concurrency
        for seat in rt.seats:
            if (
                not seat.draining
                and seat.in_flight < limit
                and (best is None or seat.in_flight < best.in_flight)
            ):
                best = seat
        return best

    def _take(self, rt: ModelRuntime, seat: Seat) -> None:
        if seat.in_flight == 0:
            seat.busy(time.monotonic())
        seat.in_flight += 1
        rt.in_flight += 1

    async def _acquire(
        self, rt: ModelRuntime, deadline: float
    ) -> tuple[Seat, float, StartRecord | None]:
        seat = self._pick(rt)
        if seat is not None and not rt.waiters:
            self._take(rt, seat)
            rt.scaler.concurrency(time.monotonic(), rt.concurrency)
            return seat, 0.0, None
        name = rt.config.name
        now = time.monotonic()
        if self.draining and not rt.seats and not rt.starts:
            raise Refused(unavailable("the gateway is shutting down"))
        if rt.failure is not None and not rt.seats and now < rt.failure_until:
            raise Refused(start_failed(rt.failure, retry_after_s=rt.failure_until - now))
        if len(rt.waiters) >= rt.config.max_queue:
            raise Refused(
                error_response(
                    429,
                    f"model {name!r}: {len(rt.waiters)} requests already queued (max_queue)",
                    "Overloaded",
                    headers=[("retry-after", "1")],
                )
            )
        if rt.scaler.activate(now, len(rt.seats), len(rt.starts)):
            self._start_replica(rt, "activate")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Seat] = loop.create_future()
        rt.waiters.append(fut)
        rt.scaler.concurrency(now, rt.concurrency)
        t0 = time.perf_counter()
        timer = loop.call_later(max(0.0, deadline - t0), _expire, fut)
        try:
            seat = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(rt, fut.result())  # a seat came as the client left
            raise
        except _QueueTimeout:
            raise Refused(
                unavailable(
                    f"model {name!r}: no replica free within queue_timeout "
                    f"({rt.config.queue_timeout_s:g} s)"
                )
            ) from None
        finally:
            timer.cancel()
            if not fut.done() or fut.cancelled() or fut.exception() is not None:
                with contextlib.suppress(ValueError):
                    rt.waiters.remove(fut)
                rt.scaler.concurrency(time.monotonic(), rt.concurrency)
        cold = seat.start if seat.ready_at >= now else None
        wait = time.perf_counter() - t0
        self.metrics.queue_wait.observe(wait, name)
        return seat, wait, cold

    def _release(self, rt: ModelRuntime, seat: Seat) -> None:
        now = time.monotonic()
        seat.in_flight -= 1
        rt.in_flight -= 1
        if seat.in_flight == 0:
            seat.idle(now)
        rt.scaler.request(now)  # idle time counts from the last answer
        if seat.draining and seat.in_flight == 0:
            self._stop_seat(rt, seat, "drained")
        self._dispatch(rt)
        rt.scaler.concurrency(time.monotonic(), rt.concurrency)

    def _dispatch(self, rt: ModelRuntime) -> None:
        """Hand free seats to queued requests, oldest first."""
        while rt.waiters:
            seat = self._pick(rt)
            if seat is None:
                return
            fut = rt.waiters.popleft()
            if fut.done():
                continue
            self._take(rt, seat)
            fut.set_result(seat)

    # -- replicas --------------------------------------------------------------------
    def _start_replica(self, rt: ModelRuntime, reason: str) -> None:
        if reason in ("activate", "replace", "min"):  # not a tick's decision (counted there)
            self.metrics.scale_events.inc(rt.config.name, "up", reason)
        task = asyncio.get_running_loop().create_task(self._run_start(rt, reason))
        rt.starts.add(task)
        task.add_done_callback(rt.starts.discard)

    async def _run_start(self, rt: ModelRuntime, reason: str) -> None:
        name = rt.config.name
        log.info("model=%s event=start reason=%s", name, reason)
        try:
            replica = await self.starter.start(rt.config)
        except StartError as exc:
            self._start_failed(rt, exc)
            return
        except Exception as exc:  # a bug in a starter: same handling, with the traceback
            log.error("model=%s event=start_bug", name, exc_info=exc)
            self._start_failed(rt, StartError(name, f"internal error: {exc!r}"))
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
        rt.last_start = record
        rt.recent_starts.append(record)
        self.recent.started(name, replica.start_path, replica.total_ms / 1e3, time.monotonic())
        rt.failure, rt.backoff_s = None, BACKOFF_FIRST_S
        seat = Seat(replica, record, time.monotonic())
        rt.seats.append(seat)
        log.info(
            "model=%s event=ready path=%s pid=%d port=%d start_ms=%.1f",
            name,
            replica.start_path,
            replica.pid,
            replica.port,
            replica.total_ms,
        )
        self._dispatch(rt)

    def _start_failed(self, rt: ModelRuntime, exc: StartError) -> None:
        name = rt.config.name
        self.metrics.start_failures.inc(name, exc.path or "unknown")
        log.error("model=%s event=start_failed path=%s reason=%s", name, exc.path, exc.problem)
        rt.failure = exc
        rt.failure_until = time.monotonic() + rt.backoff_s
        rt.backoff_s = min(rt.backoff_s * 2, BACKOFF_MAX_S)
        if rt.seats or len(rt.starts) > 1:
            return  # others will serve the queue
        response = start_failed(exc, retry_after_s=rt.failure_until - time.monotonic())
        while rt.waiters:
            fut = rt.waiters.popleft()
            if not fut.done():
                fut.set_exception(Refused(response))
        rt.scaler.concurrency(time.monotonic(), rt.concurrency)

    def _seat_failed(self, rt: ModelRuntime, seat: Seat, why: str, reason: str) -> None:
        """``seat`` failed (``reason``: connection, exited, stopped, unresponsive): take it
        out, kill it, replace it if wanted. Its requests in flight fail when it dies and are
        re-sent once (``_forward``)."""
        if seat not in rt.seats:
            return  # already handled for another request
        rt.seats.remove(seat)
        rt.retire(seat, time.monotonic())
        self.metrics.deaths.inc(rt.config.name)
        self.metrics.replaced.inc(rt.config.name, reason)
        rt.replaced[reason] += 1
        code = getattr(seat.replica, "returncode", None)
        log.warning(
            "model=%s event=replica_failed pid=%d exit=%s reason=%s: %s",
            rt.config.name,
            seat.replica.pid,
            code,
            reason,
            why,
        )
        seat.replica.kill()
        self._reap(seat.replica)
        if (rt.waiters or rt.in_flight) and not rt.starts and not rt.ready:
            self._start_replica(rt, "replace")

    def _stop_seat(self, rt: ModelRuntime, seat: Seat, reason: str) -> None:
        if seat in rt.seats:
            rt.seats.remove(seat)
        rt.retire(seat, time.monotonic())
        log.info("model=%s event=stop pid=%d reason=%s", rt.config.name, seat.replica.pid, reason)
        self._reap(seat.replica, STOP_TIMEOUT_S)

    def _reap(self, replica: Replica, timeout_s: float = 1.0) -> None:
        task = asyncio.get_running_loop().create_task(replica.stop(timeout_s))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- liveness --------------------------------------------------------------------
    def _check_liveness(self, rt: ModelRuntime, now: float) -> None:
        """Take out replicas that died or stay stopped; probe those heard from least."""
        policy = self.liveness
        for seat in list(rt.seats):
            replica = seat.replica
            state = proc_state(replica.pid) if replica.is_alive() else None
            seat.health, verdict = observe_state(seat.health, state, now, policy)
            if verdict == "dead":
                self._seat_failed(rt, seat, f"process exited (state {state})", "exited")
            elif verdict == "hung":
                self._seat_failed(
                    rt,
                    seat,
                    f"process stopped (state {state}) for {policy.stopped_s:g} s",
                    "stopped",
                )
            elif not seat.draining and probe_due(seat.health, now, policy):
                seat.health = probe_sent(seat.health)
                task = asyncio.get_running_loop().create_task(self._probe(rt, seat))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _probe(self, rt: ModelRuntime, seat: Seat) -> None:
        """``GET /health`` on a fresh connection, with the policy's deadline."""
        policy = self.liveness
        pool = UpstreamPool(seat.replica.host, seat.replica.port, max_idle=0)
        try:
            up = await pool.request(
                "GET",
                "/health",
                self._worker_auth,
                timeout_s=policy.probe_timeout_s,
                max_body_bytes=1 << 16,
            )
            ok, why = up.status == 200, f"answered {up.status}"
        except UpstreamError as exc:
            ok, why = False, str(exc)
        finally:
            pool.close()
        if seat not in rt.seats:
            return
        seat.health, verdict = probe_result(seat.health, ok, time.monotonic(), policy)
        if verdict == "hung":
            self._seat_failed(
                rt,
                seat,
                f"{seat.health.failures} health probes in a row failed, last: {why}",
                "unresponsive",
            )

    # -- autoscaling -----------------------------------------------------------------
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
        """One autoscaler tick for ``rt``: reap the dead and hung, then match the desired count."""
        self._check_liveness(rt, now)
        rt.scaler.tick(now)
        ready = rt.ready
        decision = rt.scaler.decide(now, ready)
        rt.desired, rt.panicking = decision.desired, decision.panicking
        have = ready + len(rt.starts)
        name = rt.config.name
        if self.draining:
            return
        if decision.desired > have:
            retry = rt.waiters or have < rt.config.min_replicas
            if rt.failure is not None and (now < rt.failure_until or not retry):
                return  # a broken model is retried, backing off, for its requests or min_replicas
            self.metrics.scale_events.inc(name, "up", decision.reason)
            log.info(
                "model=%s event=scale_up from=%d to=%d reason=%s panic=%s concurrency=%.1f",
                name,
                have,
                decision.desired,
                decision.reason,
                "yes" if decision.panicking else "no",
                decision.panic_concurrency,
            )
            for _ in range(decision.desired - have):
                self._start_replica(rt, decision.reason)
        elif decision.desired < ready:
            surplus = sorted((s for s in rt.seats if not s.draining), key=lambda s: s.in_flight)
            surplus = surplus[: ready - decision.desired]
            self.metrics.scale_events.inc(name, "down", decision.reason)
            log.info(
                "model=%s event=scale_down from=%d to=%d reason=%s",
                name,
                ready,
                decision.desired,
                decision.reason,
            )
            for seat in surplus:
                seat.draining = True
                if seat.in_flight == 0:
                    self._stop_seat(rt, seat, decision.reason)

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
        pool = getattr(self.starter, "pool", None)
        return dict(pool.sizes) if pool is not None else {}

    def pool_status(self) -> dict[str, Any] | None:
        starter_status = getattr(self.starter, "status", None)  # optional: the warm pool's slots
        return starter_status() if starter_status is not None else None


class _QueueTimeout(Exception):
    pass


def _expire(fut: asyncio.Future[Seat]) -> None:
    if not fut.done():
        fut.set_exception(_QueueTimeout())


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
