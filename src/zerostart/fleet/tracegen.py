"""A synthetic trace with the published shape of the Azure Functions 2019 trace.

The trace of Shahrad et al., "Serverless in the Wild" (USENIX ATC'20) cannot be downloaded
here; this generator reproduces the figures the paper gives for it (section 3), and
:func:`shape_figures` measures them on any trace, generated or real:

==========================================================  ======================
figure (paper)                                              measured by
==========================================================  ======================
45 % of applications invoked at most once per hour          ``frac_le_hourly``
81 % of applications invoked at most once per minute        ``frac_le_minutely``
the top 18.6 % of applications make 99.6 % of invocations   ``top_share``
inter-arrival CV above 1 for about 40 % of applications     ``frac_cv_above_1``
==========================================================  ======================

Parameters (:class:`GenParams`, chosen to hit those figures; none is from the paper):

- Daily rate per app: 45 % log-uniform on [``low_min``, 24] per day, 36 % log-uniform on
  (24, 1440], 19 % above 1440 with ``log10(rate / 1440) = heavy_sigma * |Z|`` (half-normal in
  log space). ``heavy_sigma = 1.25`` gives the top 18.6 % about 99.6 % of the invocations.
- Apps at most once a minute get exact event times from a renewal process: ``timer_share``
  periodic (CV 0, the paper's timer triggers), ``bursty_share`` gamma with CV in [1.5, 4],
  the rest gamma with CV in [0.3, 0.9]; the count per day is fixed by the rate.
- Busier apps get Poisson counts per minute.
- Everything but timers follows a diurnal cycle ``1 + diurnal * sin(2 pi t / day + phase)``.

The CV is measured the way the minute-resolution trace allows: inter-arrival times in whole
minutes (0 between two invocations of one minute), over apps with at least 3 invocations.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from zerostart.fleet.trace import MINUTES_PER_DAY, Trace

TOP_APPS_SHARE = 0.186  # Shahrad et al. ATC'20, section 3.3
PUBLISHED = {
    "frac_le_hourly": 0.45,
    "frac_le_minutely": 0.81,
    "top_share": 0.996,
    "frac_cv_above_1": 0.40,
}


@dataclass(frozen=True)
class GenParams:
    apps: int = 10_000
    days: int = 1
    seed: int = 0
    low_min_per_day: float = 1.0
    heavy_sigma: float = 1.25  # log10 decades, half-normal, above 1440/day
    timer_share: float = 0.30  # of the apps at most once a minute
    bursty_share: float = 0.26
    diurnal: float = 0.4  # relative amplitude of the daily cycle


def _names(n: int, seed: int) -> tuple[str, ...]:
    def h(s: str) -> str:
        return hashlib.sha256(s.encode()).hexdigest()[:32]

    return tuple(f"{h(f'owner{seed}-{i // 3}')}/{h(f'app{seed}-{i}')}" for i in range(n))


def _daily_rates(p: GenParams, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    n = p.apps
    n_hourly = round(0.45 * n)
    n_minutely = round(0.81 * n) - n_hourly
    n_heavy = n - n_hourly - n_minutely
    lo = np.log10(p.low_min_per_day)
    rates = np.concatenate([
        10 ** rng.uniform(lo, np.log10(24), n_hourly),
        10 ** rng.uniform(np.log10(24), np.log10(1440), n_minutely),
        1440 * 10 ** (p.heavy_sigma * np.abs(rng.standard_normal(n_heavy))),
    ])  # fmt: skip
    return rates[rng.permutation(n)]


def _diurnal_grid(p: GenParams, phase: float) -> npt.NDArray[np.float64]:
    minutes = np.arange(p.days * MINUTES_PER_DAY + 1)
    lam = 1 + p.diurnal * np.sin(2 * np.pi * minutes / MINUTES_PER_DAY + phase)
    cum = np.concatenate([[0.0], np.cumsum(lam[:-1])])
    op: npt.NDArray[np.float64] = cum / cum[-1]  # operational time at each minute, in [0, 1]
    return op


def generate(params: GenParams | None = None) -> Trace:
    """A trace of ``params.apps`` applications over ``params.days`` days (deterministic per seed)."""
    p = params or GenParams()
    rng = np.random.default_rng(p.seed)
    horizon = p.days * MINUTES_PER_DAY
    rates = _daily_rates(p, rng)
    counts = np.zeros((p.apps, horizon), dtype=np.int64)
    triggers = []
    phase = -np.pi / 2  # the trough at midnight, the peak at noon
    warp = _diurnal_grid(p, phase)
    minute_grid = np.arange(horizon + 1, dtype=np.float64)
    lam = 1 + p.diurnal * np.sin(2 * np.pi * (np.arange(horizon) + 0.5) / MINUTES_PER_DAY + phase)
    for a, rate in enumerate(rates):
        if rate > 1440:
            counts[a] = rng.poisson(rate / MINUTES_PER_DAY * lam)
            triggers.append("http")
            continue
        n = max(1, round(rate * p.days))
        u = rng.random()
        if u < p.timer_share:
            period = horizon / n
            t = (rng.random() + np.arange(n)) * period  # minutes
            triggers.append("timer")
        else:
            cv = (
                rng.uniform(1.5, 4.0)
                if u < p.timer_share + p.bursty_share
                else rng.uniform(0.3, 0.9)
            )
            gaps = rng.gamma(1 / cv**2, 1.0, n + 1)
            op = np.cumsum(gaps)[:n] / gaps.sum()  # operational time in (0, 1)
            t = np.interp(op, warp, minute_grid)
            triggers.append("http" if rng.random() < 0.8 else "queue")
        m = np.minimum(t.astype(np.int64), horizon - 1)
        np.add.at(counts[a], m, 1)
    return Trace(_names(p.apps, p.seed), counts, tuple(triggers))


def _cv_minutes(row: npt.NDArray[np.int64]) -> float:
    minutes = np.nonzero(row)[0]
    gaps = np.diff(minutes).astype(np.float64)  # between active minutes
    n = int(row.sum()) - 1  # inter-arrival times in all; the rest are 0 (same minute)
    mean = gaps.sum() / n
    var = (gaps**2).sum() / n - mean**2
    return float(np.sqrt(max(var, 0.0)) / mean) if mean > 0 else 0.0


def shape_figures(trace: Trace) -> dict[str, float]:
    """The four published figures, measured on ``trace`` (fractions, not percent)."""
    days = trace.minutes / MINUTES_PER_DAY
    per_app = trace.counts.sum(axis=1)
    active = per_app > 0
    daily = per_app[active] / days
    ordered = np.sort(per_app[active])[::-1]
    top = max(1, round(TOP_APPS_SHARE * ordered.size))
    cvs = [_cv_minutes(trace.counts[a]) for a in np.nonzero(per_app >= 3)[0]]
    return {
        "apps": float(active.sum()),
        "invocations": float(per_app.sum()),
        "frac_le_hourly": float((daily <= 24).mean()),
        "frac_le_minutely": float((daily <= 1440).mean()),
        "top_share": float(ordered[:top].sum() / ordered.sum()),
        "frac_cv_above_1": float(np.mean(np.array(cvs) > 1)) if cvs else 0.0,
    }
