"""Fleet policies on a generated 24-hour trace, and the buffer LP's solve time at scale.

    python bench/fleet.py [--apps 10000] [--out bench/results/fleet_sim.json] [--plots docs]

1. A trace shaped like Azure Functions 2019 (Shahrad et al., ATC'20) over two days
   (``zerostart.fleet.tracegen``); its published figures are measured and recorded.
2. Every policy runs on both days and is measured on day 2 only (every app starts day 1 at
   zero replicas, which is not a steady state). The LP plans on day 1's demand: a forecast,
   not a look at the day it is scored on.
3. Policies: no buffer; static buffers of N slots per pool (a sweep); the LP buffer at
   several waiting penalties; fixed 10-minute keep-alive (AWS Lambda, per the paper); the
   paper's hybrid histogram keep-alive. Buffer policies keep replicas ``plan.keepalive``
   (60 s, the platform's default ``idle_timeout``).
4. The target comparison: for each LP point, the cheapest static buffer whose p99 wait of
   cold requests is at least as good, and the ratio of their idle slot-hours.
5. ``fleet plan`` on 100 pools x 1,000 models: end to end (trace -> keep-alive -> demand ->
   LP) and the LP alone, median of 3.

Fleet prices and machine allocation times come from bench/fleet.toml (a scenario: no cloud
is reachable here); start-path times from bench/results/*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, ROOT, write_result
from zerostart.benchmark import machine_description
from zerostart.fleet.config import FleetConfig, PoolSpec, load_fleet
from zerostart.fleet.keepalive import KeepAlive
from zerostart.fleet.plots import plot_results
from zerostart.fleet.simulate import compare, format_row, plan_from_trace
from zerostart.fleet.starttimes import load_start_times
from zerostart.fleet.tracegen import PUBLISHED, GenParams, generate, shape_figures

STATIC = (2, 4, 8, 16, 24, 32, 36, 40, 44, 48, 56, 64)
PENALTIES = (0.001, 0.003, 0.01, 0.03)
SERVICE_LEVELS = (0.01, 0.002)  # max share of requests that wait for a machine, penalty 1e-4


def target_comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per LP point: the static buffer with the fewest buffer idle slot-hours (the issue's
    target) and the cheapest one, each among those whose cold-request p99 is at least as good."""
    statics = [r for r in rows if r["buffer"].startswith("static:") or r["buffer"] == "none"]
    statics = [r for r in statics if r["keepalive"] == rows[0]["keepalive"]]
    out = []
    for lp in (r for r in rows if r["buffer"] == "lp"):
        p99 = lp["cold_wait_s"]["p99"]
        ok = [s for s in statics if s["cold_wait_s"]["p99"] <= p99 * 1.001]
        entry: dict[str, Any] = {
            "lp_tail": lp.get("tail", "skellam"),
            "lp_wait_penalty": lp["wait_penalty"],
            "lp_max_wait_probability": lp.get("max_wait_probability"),
            "lp_cold_wait_s": lp["cold_wait_s"],
            "lp_buffer_idle_slot_hours": lp["buffer_idle_slot_hours"],
            "lp_idle_slot_hours": lp["idle_slot_hours"],
            "lp_cost": lp["cost"],
        }
        for label, key in (("fewest_slot_hours", "buffer_idle_slot_hours"), ("cheapest", "cost")):
            best = min(ok, key=lambda s, k=key: s[k], default=None)
            if best is None:
                entry[label] = None
                continue
            entry[label] = {
                "static": best["buffer"],
                "cold_wait_s": best["cold_wait_s"],
                "buffer_idle_slot_hours": best["buffer_idle_slot_hours"],
                "idle_slot_hours": best["idle_slot_hours"],
                "cost": best["cost"],
                "lp_buffer_idle_saving": 1
                - lp["buffer_idle_slot_hours"] / best["buffer_idle_slot_hours"],
                "lp_idle_saving": 1 - lp["idle_slot_hours"] / best["idle_slot_hours"],
                "lp_cost_saving": 1 - lp["cost"] / best["cost"],
            }
        out.append(entry)
    return out


def print_comparison(comparison: list[dict[str, Any]]) -> None:
    for c in comparison:
        eps = c["lp_max_wait_probability"]
        head = f"lp:{c.get('lp_tail', 'skellam')} @ {c['lp_wait_penalty']:g}" + (
            f" eps {eps:g}" if eps else ""
        )
        head += f": cold p99 {c['lp_cold_wait_s']['p99']:.2f} s"
        for label in ("fewest_slot_hours", "cheapest"):
            b = c[label]
            if b is None:
                print(f"{head}: no static buffer reaches it")
                break
            print(
                f"{head} vs {label} {b['static']} ({b['cold_wait_s']['p99']:.2f} s): LP saves "
                f"{b['lp_buffer_idle_saving']:+.1%} buffer idle slot-h, {b['lp_idle_saving']:+.1%} "
                f"all idle slot-h, {b['lp_cost_saving']:+.1%} $"
            )


def replot(path: Path, plots: str) -> int:
    """Recompute the comparison and the plots from a result file (no simulation)."""
    result = json.loads(path.read_text())
    result["target_comparison"] = target_comparison(result["policies"])
    print_comparison(result["target_comparison"])
    title = f"{result['trace']['apps']} apps, day 2 of a generated trace"
    paths = plot_results(result["policies"], plots, title=title)
    result["plots"] = [
        str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in paths
    ]
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"rewrote {path}")
    return 0


def lp_at_scale(start: Any, repeats: int = 3) -> dict[str, Any]:
    """100 pools x 1,000 models: a generated day of 1,000 apps spread over 100 pools."""
    rng = np.random.default_rng(11)
    pools = {
        f"pool{i:03d}": PoolSpec(f"pool{i:03d}", "cuda" if i % 2 else "cpu", float(rng.uniform(0.05, 3.0)),
                                 float(rng.uniform(30, 300)), float(rng.uniform(5, 60)),
                                 slots_per_machine=int(rng.choice([1, 4, 8])), max_slots=100_000)
        for i in range(100)
    }  # fmt: skip
    cfg = FleetConfig(pools=pools, default_pool="pool000", shares=dict.fromkeys(pools, 1.0),
                      keepalive_s=60.0, wait_penalty=0.01)  # fmt: skip
    trace = generate(GenParams(apps=1000, days=1, seed=5))
    ends, builds, solves = [], [], []
    plan = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        plan = plan_from_trace(trace, cfg, start, KeepAlive("fixed", 60.0))
        ends.append(time.perf_counter() - t0)
        builds.append(plan.build_s)
        solves.append(plan.solve_s)
    assert plan is not None
    models_per_pool = np.bincount([int(cfg.pool_of(n)[4:]) for n in trace.names], minlength=100)
    return {
        "pools": 100, "models": 1000, "windows": int(plan.slots.shape[1]),
        "models_per_pool_min_max": [int(models_per_pool.min()), int(models_per_pool.max())],
        "variables": plan.variables, "constraints": plan.constraints,
        "end_to_end_s": statistics.median(ends), "lp_build_s": statistics.median(builds),
        "lp_solve_s": statistics.median(solves), "lp_total_s": statistics.median(np.add(builds, solves)),
        "runs_end_to_end_s": ends, "target_s": 2.0,
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--apps", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "fleet_sim.json"))
    ap.add_argument("--plots", default=str(ROOT / "docs"))
    ap.add_argument("--fleet", default=str(ROOT / "bench" / "fleet.toml"))
    ap.add_argument("--tails", default="skellam,replay",
                    help="the LP's demand models to run: skellam, empirical, replay")  # fmt: skip
    ap.add_argument(
        "--replot", action="store_true", help="only redo comparison and plots from --out"
    )
    args = ap.parse_args()
    if args.replot:
        return replot(Path(args.out), args.plots)

    machine = machine_description()
    cfg = load_fleet(args.fleet)
    start = load_start_times(RESULTS)
    for note in start.notes:
        print(f"note: {note}")
    t0 = time.perf_counter()
    trace = generate(GenParams(apps=args.apps, days=2, seed=args.seed))
    gen_s = time.perf_counter() - t0
    day1, day2 = trace.slice_minutes(0, 1440), trace.slice_minutes(1440, 2880)
    figures = {"day1": shape_figures(day1), "day2": shape_figures(day2)}
    print(
        f"trace: {args.apps} apps, 2 days, {trace.total:,} invocations, generated in {gen_s:.1f} s"
    )
    for k, v in PUBLISHED.items():
        print(
            f"  {k:<18} day 1 {figures['day1'][k]:.3f}  day 2 {figures['day2'][k]:.3f}  (published {v})"
        )

    specs = ["none", *(f"static:{n}" for n in STATIC), "keepalive:10m", "hybrid"]
    rows = compare(trace, cfg, start, specs, train=day1, measure_from_s=86400.0, log=print)
    for tail in args.tails.split(","):
        spec = "lp" if tail == "skellam" else f"lp:{tail}"
        for pen in PENALTIES:
            rows += compare(trace, cfg, start, [spec], train=day1, measure_from_s=86400.0,
                            wait_penalty=pen, log=lambda s, p=pen: print(f"{s}  (penalty {p})"))  # fmt: skip
        for eps in SERVICE_LEVELS:
            rows += compare(trace, replace(cfg, max_wait_probability=eps), start, [spec],
                            train=day1, measure_from_s=86400.0, wait_penalty=1e-4,
                            log=lambda s, e=eps: print(f"{s}  (wait probability <= {e})"))  # fmt: skip
    comparison = target_comparison(rows)
    print_comparison(comparison)

    scale = lp_at_scale(start)
    print(f"fleet plan, 100 pools x 1,000 models: end to end {scale['end_to_end_s']:.2f} s, "
          f"LP build {scale['lp_build_s']:.2f} s + solve {scale['lp_solve_s']:.2f} s (target < 2 s)")  # fmt: skip

    plots = plot_results(rows, args.plots, title=f"{args.apps} apps, day 2 of a generated trace")
    result = {
        "benchmark": "fleet",
        "machine": machine,
        "load_average_after": list(os.getloadavg()),
        "fleet": {
            name: {k: v for k, v in vars(p).items() if k != "name"} for name, p in cfg.pools.items()
        },
        "plan": {
            "window_s": cfg.window_s,
            "keepalive_s": cfg.keepalive_s,
            "start_path": cfg.start_path,
            "wait_penalties": list(PENALTIES),
            "tails": args.tails.split(","),
        },
        "trace": {
            "apps": args.apps,
            "days": 2,
            "seed": args.seed,
            "invocations": trace.total,
            "generate_s": gen_s,
            "params": vars(replace(GenParams(), apps=args.apps, days=2, seed=args.seed)),
            "figures": figures,
            "published": PUBLISHED,
        },
        "start_times": start.describe(),
        "measured": "day 2 (hours 24-48); lp planned on day 1",
        "policies": rows,
        "target_comparison": comparison,
        "plan_at_scale": scale,
        "plots": [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in plots],
    }
    out = Path(args.out)
    if out.resolve().parent == RESULTS.resolve():
        write_result(out.stem, result)
    else:
        out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(format_row(r) for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
