"""`zerostart fleet trace | plan | simulate` end to end on a small generated trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zerostart.cli import main

ROOT = Path(__file__).resolve().parents[2]
FLEET, RESULTS = ROOT / "bench" / "fleet.toml", ROOT / "bench" / "results"


def test_trace_plan_simulate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "trace", "-o", str(tmp_path / "t"), "--apps", "60", "--seed", "2"]) == 0
    files = sorted(str(p) for p in (tmp_path / "t").glob("*.csv"))
    assert len(files) == 1
    plan_json = tmp_path / "plan.json"
    args = ["--trace", *files, "--results", str(RESULTS)]
    assert main(["fleet", "plan", str(FLEET), *args, "--json", str(plan_json)]) == 0
    plan = json.loads(plan_json.read_text())
    assert set(plan["pools"]) == {"cpu", "gpu-l4"}
    assert all(len(p["slots"]) == 24 for p in plan["pools"].values())
    sim_json = tmp_path / "sim.json"
    code = main(["fleet", "simulate", str(FLEET), *args, "--policies", "none,static:2,lp",
                 "--json", str(sim_json)])  # fmt: skip
    assert code == 0
    rows = json.loads(sim_json.read_text())["policies"]
    assert [r["policy"] for r in rows] == ["none", "static:2", "lp"]
    out = capsys.readouterr()
    assert "buffer plan: 2 pools x 24 windows" in out.out
    assert "in-sample" in out.err  # lp planned on the trace it is scored on, and says so


def test_missing_benchmark_results_name_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "e.csv"
    trace.write_text("timestamp,model\n0,a\n90,a\n")
    code = main(["fleet", "plan", str(FLEET), "--trace", str(trace), "--results", str(tmp_path)])
    assert code == 1
    assert "bench/coldstart.py" in capsys.readouterr().err
