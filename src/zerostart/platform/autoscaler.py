"""How many replicas a model should have: Knative's KPA, as a pure state machine.

Theory of operation
-------------------
No I/O and no clock of its own: the gateway feeds a :class:`Scaler` events
with the time they happened (``now``, seconds on any monotonic clock) and asks
it for a :class:`Decision`; it then starts or drains replicas to match. One
``Scaler`` per model.

*Observed concurrency* is the number of requests in flight to the model's
replicas plus those queued waiting for one, averaged over time:
:meth:`Scaler.concurrency` is called whenever it changes, and each tick's
average (the integral over the tick, divided by its length) becomes one
sample. Two windows average the samples (Knative's KPA, ``config-autoscaler``;
defaults in :class:`~zerostart.platform_toml.AutoscalerConfig`):

* the *stable* window (Knative ``stable-window``, 60 s) and
* the *panic* window (``panic-window-percentage``, 10 % of it: 6 s).

With ``target = concurrency × target_utilization`` per replica (Knative's
``container-concurrency-target-percentage``, 70 %)::

    ready    = max(1, ready replicas)
    stable   = ceil(stable average / target)        # desired, calm
    panic    = ceil(panic average / target)         # desired, bursty
    both clamped to [floor(ready / max_scale_down_rate), ceil(ready × max_scale_up_rate)]
    panicking starts when panic / ready >= panic_threshold_percentage / 100 (200 %),
    is extended while that holds, and ends a stable window after it last held;
    while panicking the count never goes down: desired = max(panic, last desired)
    otherwise desired = stable

(``knative.dev/serving/pkg/autoscaler/scaling/autoscaler.go``.) Then, where
we differ from Knative:

* **To zero by idle time, not by average.** Knative scales to zero once the
  stable average reaches zero (plus a grace period). Here a model goes to
  ``min_replicas`` when no request has arrived or been answered for
  ``idle_timeout`` and none is in flight or queued: timed from the last
  request (not from the last scale-up), so a slow answer does not eat into
  the idle time. Until then it keeps at least one replica, however low the
  average.
* **From zero at once.** A request that finds no replica makes
  ``desired >= 1`` at that instant (the gateway asks on arrival, like Knative's
  activator), so the first start never waits for a tick.
* The result is clamped to ``[min_replicas, max_replicas]``.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from zerostart.platform_toml import AutoscalerConfig, ModelConfig


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str  # one word for logs and the scale-event metric: see Scaler.decide
    panicking: bool
    stable_concurrency: float  # averages that led here (requests)
    panic_concurrency: float


class Scaler:
    """KPA state of one model; see the module docstring."""

    def __init__(self, model: ModelConfig, config: AutoscalerConfig, now: float) -> None:
        self.model = model
        self.config = config
        self.target = model.concurrency * config.target_utilization
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._value = 0.0  # current concurrency (in flight + queued)
        self._since = now  # when _value last changed
        self._tick_start = now
        self._area = 0.0  # integral of concurrency over the current tick
        self._last_request: float | None = None
        self._panic_since: float | None = None  # last time the panic condition held
        self._desired = model.min_replicas

    # -- events ------------------------------------------------------------------
    def concurrency(self, now: float, value: float) -> None:
        """The model's concurrency changed to ``value`` at ``now``."""
        self._area += self._value * max(0.0, now - self._since)
        self._value, self._since = value, now

    def request(self, now: float) -> None:
        """A request for this model arrived or was answered (restarts the idle clock)."""
        self._last_request = now

    def idle_s(self, now: float) -> float | None:
        """Seconds since the last request arrived; None if none ever did."""
        return None if self._last_request is None else now - self._last_request

    # -- decisions ---------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Close the current tick: its time-averaged concurrency becomes a sample."""
        self.concurrency(now, self._value)
        length = now - self._tick_start
        if length > 0:
            self._samples.append((now, self._area / length))
        self._tick_start, self._area = now, 0.0
        horizon = now - self.config.stable_window_s
        while self._samples and self._samples[0][0] <= horizon:
            self._samples.popleft()

    def _average(self, now: float, window_s: float) -> float:
        values = [v for t, v in self._samples if t > now - window_s]
        # the current (unfinished) tick counts too, so a burst shows before the tick ends
        values.append(self._value)
        return sum(values) / len(values)

    def decide(self, now: float, ready: int) -> Decision:
        """Desired replicas given ``ready`` (serving) replicas; call after :meth:`tick`.

        ``reason`` is one of ``min`` (held at min_replicas), ``idle`` (scaled to
        min after idle_timeout), ``activate`` (a request waits and nothing
        runs), ``panic``, ``stable``, ``max`` (capped at max_replicas).
        """
        cfg, m = self.config, self.model
        stable_avg = self._average(now, cfg.stable_window_s)
        panic_avg = self._average(now, cfg.panic_window_s)
        base = max(1, ready)
        lo = math.floor(base / cfg.max_scale_down_rate)
        hi = math.ceil(base * cfg.max_scale_up_rate)
        stable = min(max(math.ceil(stable_avg / self.target - 1e-9), lo), hi)
        panic = min(max(math.ceil(panic_avg / self.target - 1e-9), lo), hi)
        if panic / base >= cfg.panic_threshold_percentage / 100:
            self._panic_since = now
        elif self._panic_since is not None and now - self._panic_since >= cfg.stable_window_s:
            self._panic_since = None
        panicking = self._panic_since is not None
        if panicking:
            desired, reason = max(panic, self._desired), "panic"
        else:
            desired, reason = stable, "stable"
        idle = self.idle_s(now)
        busy = self._value > 0
        if not busy and (idle is None or idle >= m.idle_timeout_s):
            desired, reason = 0, "idle"
            self._panic_since, panicking = None, False
        elif desired < 1:
            # traffic within idle_timeout: keep one replica, however low the average
            desired, reason = 1, ("activate" if ready == 0 else "stable")
        if desired < m.min_replicas:
            desired, reason = m.min_replicas, "min"
        if desired > m.max_replicas:
            desired, reason = m.max_replicas, "max"
        self._desired = desired
        return Decision(desired, reason, panicking, stable_avg, panic_avg)

    def activate(self, now: float, ready: int, starting: int) -> bool:
        """A request arrived and found no free replica: start one now (no tick)?

        True exactly when nothing serves or starts yet and the model may run
        at least one replica, so a burst at zero triggers one start, not many.
        """
        self.request(now)
        return ready == 0 and starting == 0 and self.model.max_replicas >= 1
