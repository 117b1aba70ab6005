"""``zerostart fleet plan | simulate | trace`` and ``zerostart deploy knative | kubernetes``.

:func:`add_parsers` takes the main parser's sub-parser action. Handlers import the fleet
machinery (OR-Tools, SimPy, jsonschema) only when they run and raise typed errors; the main
CLI shows them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from zerostart.fleet.errors import FleetError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _keepalive(spec: str, default_s: float) -> Any:
    from zerostart.fleet.keepalive import KeepAlive, parse_keepalive

    if not spec:
        return KeepAlive("fixed", default_s)
    try:
        return parse_keepalive(spec if spec == "hybrid" or ":" in spec else f"keepalive:{spec}")
    except ValueError as exc:
        raise FleetError(str(exc)) from None


def cmd_plan(args: argparse.Namespace) -> int:
    from zerostart.fleet.config import load_fleet
    from zerostart.fleet.simulate import plan_from_trace
    from zerostart.fleet.starttimes import load_start_times
    from zerostart.fleet.trace import read_trace

    cfg = load_fleet(args.config)
    start = load_start_times(args.results)
    for note in start.notes:
        _log(f"note: {note}")
    t0 = time.perf_counter()
    trace = read_trace(args.trace)
    t_read = time.perf_counter() - t0
    plan = plan_from_trace(trace, cfg, start, _keepalive(args.keepalive, cfg.keepalive_s),
                           wait_penalty=args.wait_penalty)  # fmt: skip
    total = time.perf_counter() - t0
    hours = [f"{int(i * plan.window_s // 3600):02d}h" for i in range(plan.slots.shape[1])]
    print(f"buffer plan: {len(plan.pools)} pools x {len(hours)} windows of {plan.window_s / 60:g} min, "
          f"{len(trace.names)} models, start path {cfg.start_path} ({plan.start_s:.3f} s)")  # fmt: skip
    for i, pool in enumerate(plan.pools):
        s = plan.slots[i]
        worst = int(plan.stockout[i].argmax())
        print(f"  {pool:<16} slots min/mean/max {s.min()}/{s.mean():.1f}/{s.max()}  "
              f"P(wait for a machine) <= {plan.stockout[i].max():.4f} (window {hours[worst]})  "
              f"mean wait {plan.start_s + plan.slot_wait_s[i].mean():.3f} s")  # fmt: skip
    print(f"idle {plan.idle_slot_hours_per_day:.1f} slot-h/day = ${plan.idle_cost_per_day:.2f}/day; "
          f"waiting ${plan.wait_cost_per_day:.2f}/day; LP {plan.variables} vars, {plan.constraints} "
          f"constraints, built {plan.build_s:.2f} s, solved {plan.solve_s:.2f} s (trace read {t_read:.2f} s, "
          f"total {total:.2f} s)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(plan.to_dict(), indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from zerostart.fleet.config import load_fleet
    from zerostart.fleet.simulate import compare
    from zerostart.fleet.starttimes import load_start_times
    from zerostart.fleet.trace import read_trace
    from zerostart.units import parse_duration

    cfg = load_fleet(args.config)
    start = load_start_times(args.results)
    for note in start.notes:
        _log(f"note: {note}")
    trace = read_trace(args.trace)
    train = read_trace(args.train) if args.train else None
    specs = [s.strip() for s in args.policies.split(",") if s.strip()]
    if not specs:
        raise FleetError(
            "no policies given", hint="e.g. --policies none,static:2,lp,keepalive:10m,hybrid"
        )
    if "lp" in args.policies and train is None:
        _log(
            "note: lp plans on the simulated trace itself (in-sample); pass --train for another one"
        )
    try:
        warmup = parse_duration(args.warmup)
    except ValueError as exc:
        raise FleetError(f"--warmup: {exc}") from None
    if warmup >= trace.minutes * 60:
        raise FleetError(
            f"--warmup {args.warmup} is not shorter than the trace ({trace.minutes} min)"
        )
    _log(
        f"{len(trace.names)} apps, {trace.minutes} min, {trace.total} invocations; measuring after {warmup:g} s"
    )
    rows = compare(trace, cfg, start, specs, train=train, measure_from_s=warmup,
                   wait_penalty=args.wait_penalty, log=print)  # fmt: skip
    if args.json:
        Path(args.json).write_text(
            json.dumps({"start_times": start.describe(), "policies": rows}, indent=1) + "\n"
        )
        print(f"wrote {args.json}")
    if args.plots:
        from zerostart.fleet.plots import plot_results

        for p in plot_results(rows, args.plots):
            print(f"wrote {p}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from zerostart.fleet.trace import write_azure
    from zerostart.fleet.tracegen import PUBLISHED, GenParams, generate, shape_figures

    trace = generate(GenParams(apps=args.apps, days=args.days, seed=args.seed))
    for path in write_azure(trace, args.out):
        print(f"wrote {path}")
    figures = shape_figures(trace)
    for key, published in PUBLISHED.items():
        print(f"  {key:<18} {figures[key]:.3f}  (published {published})")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from zerostart.fleet.config import load_fleet, load_platform
    from zerostart.fleet.deploy import generate, write

    plat = load_platform(args.config)
    fleet = load_fleet(args.fleet) if args.fleet else None
    plan = None
    if args.plan:
        try:
            plan = json.loads(Path(args.plan).read_text())
        except (OSError, ValueError) as exc:
            raise FleetError(f"{args.plan}: cannot read the plan: {exc}") from None
    files = generate(args.target, plat, fleet, plan)  # validated; raises before writing
    for path in write(files, args.out):
        print(f"wrote {path}")
    n = sum(len(v) for v in files.values())
    print(f"{n} objects valid against the Kubernetes {plat.deploy.kubernetes_version} schemas"
          + (" and Knative's Service CRD schema" if args.target == "knative" else ""))  # fmt: skip
    if plan is None:
        print("no --plan: no buffer objects (run `zerostart fleet plan ... --json plan.json`)")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``fleet`` and ``deploy`` on the main parser's sub-parser action."""
    fleet = sub.add_parser(
        "fleet", help="size the ready-capacity buffer (LP) and simulate a fleet on a trace"
    )
    fsub = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="fleet.toml")
        p.add_argument("--trace", nargs="+", required=True,
                       help="Azure Functions per-minute CSV file(s) or one timestamp,model CSV")  # fmt: skip
        p.add_argument(
            "--results", default="bench/results", help="benchmark results with start-path times"
        )
        p.add_argument(
            "--wait-penalty", type=float, help="$ per request-second waiting (default: fleet.toml)"
        )
        p.add_argument("--json", help="also write the result here")

    p = fsub.add_parser("plan", help="solve the buffer LP: ready slots per pool and window")
    common(p)
    p.add_argument(
        "--keepalive", default="", help="keep-alive the forecast assumes: DURATION or hybrid"
    )
    p.set_defaults(func=cmd_plan)

    s = fsub.add_parser("simulate", help="compare buffer and keep-alive policies on a trace")
    common(s)
    s.add_argument("--policies", default="none,static:2,lp,keepalive:10m,hybrid",
                   help="comma list: none, static:N, lp, keepalive:DURATION, hybrid, BUFFER+KEEPALIVE")  # fmt: skip
    s.add_argument("--train", nargs="+", help="trace the LP plans on (default: the simulated one)")
    s.add_argument(
        "--warmup", default="1h", help="simulated, not measured: every app starts at zero"
    )
    s.add_argument("--plots", help="folder for PNG plots (needs matplotlib)")
    s.set_defaults(func=cmd_simulate)

    t = fsub.add_parser("trace", help="generate a trace shaped like Azure Functions 2019 (ATC'20)")
    t.add_argument("-o", "--out", required=True, help="folder for the day files")
    t.add_argument("--apps", type=int, default=10_000)
    t.add_argument("--days", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_trace)

    d = sub.add_parser("deploy", help="write Knative or Kubernetes manifests from platform.toml")
    d.add_argument("target", choices=["knative", "kubernetes"])
    d.add_argument("config", help="platform.toml")
    d.add_argument("-o", "--out", required=True, help="folder for the YAML files")
    d.add_argument("--fleet", help="fleet.toml (node pools, slot resources)")
    d.add_argument("--plan", help="plan JSON from `zerostart fleet plan --json` (the buffer)")
    d.set_defaults(func=cmd_deploy)
