"""Measure the fp32 GEMM plans of each CPU kernel build on this CPU; add its rows to the table.

Run on the machine to tune (any x86-64 Linux; an Intel session adds the Intel rows):

    python tools/cpu_tune.py [--arch x86-64-v3 --arch x86-64-v4] [--rounds 7] [--write]

For each build this CPU runs (default: every DEFAULT_ARCHS build it can run):

1. Every candidate plan (register tile x packed W panels x k block x row block) is
   first checked against numpy in float64 on a ragged product (M, N, K not
   multiples of any tile, several k and row blocks) and on one encoder product:
   a plan over 1e-5 relative error (of sum |a||w|) is rejected and named.
2. Search, one thread, every candidate interleaved with numpy's OpenBLAS (one
   thread) round by round on the eight products of a MiniLM and a bert-base
   layer at 128 rows (b1 x 128): (a) tile x packing at k blocks 256 and 768;
   (b) the k block for the best two; (c) the row block; (d) the packed block of W. The score is the
   geometric mean over products of OpenBLAS's median time / ours: > 1 is ahead.
   The best three are timed again at 4096 rows (b32 x 128), and the best over
   both row counts is taken. Plans are compared on the calling thread's CPU
   time (median over rounds), which a shared machine disturbs far less than
   wall time.
   Then the best of each stage and the default rule are timed together at 128 and
   4096 rows; the best geometric mean over both wins.
3. Threads (``--threads``, default 2): the winner with threads splitting rows
   against splitting columns at 128, 512 and 4096 rows, OpenBLAS at the same
   thread count interleaved; ``col_split_rows`` = the first row count at which
   rows win.

Writes ``bench/results/cpu_tune_<vendor>-<family>-<model>.json`` (every timing,
the CPU, its flags, the load average) and, with ``--write``, replaces this CPU's
rows in ``src/zerostart/kernels/tuning/cpu_gemm.json``; ``zerostart convert``
copies that table into every CPU bundle, and the worker takes this CPU's row
at load (``zerostart.engine.cpu_tuning``).
"""

from __future__ import annotations

import os
import sys

if "--openblas-coretype" in sys.argv:  # before numpy loads OpenBLAS (DYNAMIC_ARCH reads it once)
    os.environ["OPENBLAS_CORETYPE"] = sys.argv[sys.argv.index("--openblas-coretype") + 1]

import argparse
import json
import math
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from gemm_timing import (  # noqa: E402
    Problem,
    encoder_shapes,
    interleave,
    machine_cpu,
    set_openblas_threads,
    with_plan,
)
from zerostart.benchmark import machine_description  # noqa: E402
from zerostart.engine.cpu_tuning import GemmPlan, cpu_identity  # noqa: E402
from zerostart.engine.native import NativeKernels, cpu_flags  # noqa: E402
from zerostart.engine.parallel import Workers  # noqa: E402
from zerostart.kernels import cpu_build  # noqa: E402

REL_TOLERANCE = 1e-5
KC_SEARCH = (128, 192, 256, 384, 512, 768, 1024)
NC_BYTES = (256 << 10, 1 << 20, 4 << 20)
SPLIT_ROWS = (128, 512, 4096)
ALWAYS_COLUMNS = 1 << 20  # col_split_rows when columns won at every row count measured


def _key(p: GemmPlan) -> str:
    return f"{p.tile}/kc{p.kc}/mc{p.mc}/nc{p.nc}/{'pack' if p.pack else 'inplace'}"


def _score(
    timings: dict[str, dict[str, dict[str, float]]], shape_keys: list[str], cand: str, stat: str
) -> float:
    """Geometric mean over shapes of OpenBLAS's time / ours (> 1: ahead).

    ``stat``: at one thread the median CPU time of the calling thread (on a machine shared
    with other work, wall time swung by ±30 % between rounds of the same plan; CPU time
    leaves out the waits for a core); with threads, the fastest round's wall time.
    """
    logs = [math.log(timings[s]["openblas"][stat] / timings[s][cand][stat]) for s in shape_keys]
    return math.exp(sum(logs) / len(logs))


class Tuner:
    def __init__(self, kernels: NativeKernels, rounds: int, large_rows: int = 4096) -> None:
        self.kernels, self.rounds, self.large_rows = kernels, rounds, large_rows
        self.one = Workers(1)
        self.rejected: dict[str, str] = {}
        self.log: list[dict[str, Any]] = []

    def correct(self, plan: GemmPlan) -> bool:
        k = with_plan(self.kernels, plan)
        for m, kk, n in ((131, 1601, 97), (128, 768, 2304)):
            p = Problem(m, kk, n, seed=m)
            p.ours(k, self.one)()
            err = p.relative_error()
            if not err <= REL_TOLERANCE:
                self.rejected[_key(plan)] = f"relative error {err:.2e} at {m}x{kk}x{n}"
                return False
        return True

    def time(self, plans: list[GemmPlan], rows: int, stage: str) -> dict[str, float]:
        """Score of each plan (one thread) over the encoder's products at ``rows`` rows."""
        plans = [p for p in dict.fromkeys(plans) if self.correct(p)]
        timings: dict[str, dict[str, dict[str, float]]] = {}
        for model, m, k, n in encoder_shapes((rows,)):
            prob = Problem(m, k, n)
            fns = {"openblas": prob.openblas()}
            fns.update({_key(p): prob.ours(with_plan(self.kernels, p), self.one) for p in plans})
            rounds = self.rounds if rows <= 512 else max(3, self.rounds // 2)
            timings[f"{model} {m}x{k}x{n}"] = interleave(fns, rounds)
        keys = list(timings)
        scores = {_key(p): _score(timings, keys, _key(p), "cpu_median_s") for p in plans}
        self.log.append(
            {"stage": stage, "rows": rows, "threads": 1, "scores": scores, "timings": timings,
             "load_average": list(os.getloadavg())}
        )  # fmt: skip
        for name, s in sorted(scores.items(), key=lambda kv: -kv[1])[:5]:
            print(f"  {stage:<10} {rows:>5} rows  {name:<36} {s:5.2f}x OpenBLAS", flush=True)
        return scores

    def search(self) -> GemmPlan:
        base = self.kernels.gemm_plan
        tiles = self.kernels.gemm_f32_tiles
        isa = tiles[0].split("_")[0]
        own = [t for t in tiles if isa == "v4" or not t.startswith("v4_")]
        by_key: dict[str, GemmPlan] = {}

        def plans(ps: list[GemmPlan]) -> list[GemmPlan]:
            by_key.update({_key(p): p for p in ps})
            return ps

        stage_a = plans(
            [
                base._replace(tile=t, pack=pk, kc=kc, mc=0)
                for t in own
                for pk in (False, True)
                for kc in (256, 768)
            ]
        )
        a = self.time(stage_a, 128, "tile+pack")
        top = sorted(a, key=lambda x: -a[x])[:2]
        stage_b = plans([by_key[t]._replace(kc=kc) for t in top for kc in KC_SEARCH])
        b = self.time(stage_b, 128, "kc")
        best = by_key[max(b, key=lambda x: b[x])]
        l2 = cpu_identity().l2_bytes or 1 << 20
        mcs = sorted(
            {
                max(best.mr, int(l2 * f) // (4 * best.kc) // best.mr * best.mr)
                for f in (0.25, 0.5, 0.75)
            }
        )
        stage_c = plans([best._replace(mc=mc) for mc in (0, *mcs)])
        c = self.time(stage_c, 128, "mc")
        best = by_key[max(c, key=lambda x: c[x])]
        stages = [a, b, c]
        if best.pack:  # the packed block of W: 256 KiB to 4 MiB
            ncs = sorted(
                {max(best.nr, (nb // (4 * best.kc)) // best.nr * best.nr) for nb in NC_BYTES}
            )
            stages.append(self.time(plans([best._replace(nc=nc) for nc in (0, *ncs)]), 128, "nc"))
        # Finalists, timed together (scores from different runs are not comparable on a shared
        # machine): the best of each stage and the default rule, at 128 and at 4096 rows.
        finalists = list(dict.fromkeys(
            [max(st, key=lambda x: st[x]) for st in stages] + [_key(base)]
        ))  # fmt: skip
        by_key[_key(base)] = base
        small = self.time([by_key[k] for k in finalists], 128, "final 128")
        big = self.time([by_key[k] for k in finalists], self.large_rows, "final large")
        both = {k: math.sqrt(small[k] * big[k]) for k in finalists if k in small and k in big}
        return by_key[max(both, key=lambda x: both[x])]

    def split(self, plan: GemmPlan, threads: int) -> int:
        """col_split_rows for ``plan`` at ``threads`` threads (see the module docstring)."""
        workers = Workers(threads)
        set_openblas_threads(threads)
        try:
            rows_win: list[int] = []
            for m in sorted({*SPLIT_ROWS[:-1], self.large_rows}):
                timings: dict[str, dict[str, dict[str, float]]] = {}
                for model, mm, k, n in encoder_shapes((m,)):
                    prob = Problem(mm, k, n)
                    fns = {
                        "openblas": prob.openblas(),
                        "columns": prob.ours(with_plan(self.kernels, plan._replace(col_split_rows=ALWAYS_COLUMNS)), workers),
                        "rows": prob.ours(with_plan(self.kernels, plan._replace(col_split_rows=0)), workers),
                    }  # fmt: skip
                    timings[f"{model} {mm}x{k}x{n}"] = interleave(
                        fns, self.rounds if m <= 512 else 3
                    )
                keys = list(timings)
                s = {c: _score(timings, keys, c, "min_s") for c in ("columns", "rows")}
                self.log.append(
                    {"stage": "split", "rows": m, "threads": threads, "scores": s, "timings": timings,
                     "load_average": list(os.getloadavg())}
                )  # fmt: skip
                print(
                    f"  split {threads}t {m:>5} rows  columns {s['columns']:5.2f}x  rows {s['rows']:5.2f}x OpenBLAS"
                )
                if s["rows"] >= s["columns"]:
                    rows_win.append(m)
            return min(rows_win) if rows_win else ALWAYS_COLUMNS
        finally:
            workers.close()
            set_openblas_threads(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", action="append", help="builds to tune (default: every runnable one)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--large-rows",
        type=int,
        default=4096,
        help="the b32 x 128 row count (smaller for a slow build on a busy machine: the portable "
        "build's 4096-row products take ~10 s each at load 15)",
    )
    ap.add_argument("--write", action="store_true", help="replace this CPU's rows in the table")
    ap.add_argument(
        "--openblas-coretype",
        help="OpenBLAS kernel family to compare with (e.g. NEHALEM, SSE-only, for the portable build)",
    )
    args = ap.parse_args(argv)
    flags = cpu_flags()
    archs = args.arch or [
        a for a in cpu_build.DEFAULT_ARCHS if set(cpu_build.arch_features(a)) <= flags
    ]
    cpu = cpu_identity()
    set_openblas_threads(1)
    load_before = list(os.getloadavg())
    rows, details = [], []
    for arch in archs:
        kernels = NativeKernels(cpu_build.build_library(arch), arch)
        isa = kernels.gemm_f32_tiles[0].split("_")[0]
        print(f"{arch} ({isa}) on {cpu.describe()}, default {_key(kernels.gemm_plan)}", flush=True)
        tuner = Tuner(kernels, args.rounds, args.large_rows)
        best = tuner.search()
        split = tuner.split(best, args.threads) if args.threads > 1 else best.col_split_rows
        row = {
            "cpu": machine_cpu(), "isa": isa, "tile": best.tile, "kc": best.kc, "mc": best.mc,
            "nc": best.nc, "pack": best.pack, "col_split_rows": split, "arch": arch,
            "measured": machine_description()["date"],
        }  # fmt: skip
        print(f"  -> {row}", flush=True)
        rows.append(row)
        details.append(
            {"arch": arch, "isa": isa, "default_plan": _key(kernels.gemm_plan), "chosen": row,
             "rejected": tuner.rejected, "stages": tuner.log}
        )  # fmt: skip
    tag = f"{cpu.vendor}-{cpu.family}-{cpu.model}-" + "+".join(archs)
    result = {
        "benchmark": "cpu_tune",
        "machine": {
            **machine_description(),
            "cpu_identity": machine_cpu(),
            "cpu_flags": sorted(flags),
        },
        "method": "interleaved with numpy's OpenBLAS round by round; score = geometric mean of OpenBLAS median / ours",
        "rounds": args.rounds,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "auto"),
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "rows": rows,
        "builds": details,
    }
    out = REPO / "bench" / "results" / f"cpu_tune_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    if args.write:
        table_path = cpu_build.TUNING_TABLE
        table = json.loads(table_path.read_text())
        mine = {(r["isa"]) for r in rows}
        kept = [
            r for r in table["rows"]
            if not ((r["cpu"]["vendor"], r["cpu"]["family"], r["cpu"]["model"]) == (cpu.vendor, cpu.family, cpu.model)
                    and r["isa"] in mine)
        ]  # fmt: skip
        table["rows"] = kept + rows
        table_path.write_text(json.dumps(table, indent=1) + "\n")
        print(f"updated {table_path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
