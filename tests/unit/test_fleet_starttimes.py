"""Start-path times come from the benchmark results, in the shapes the benchmarks write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from zerostart.fleet.starttimes import load_start_times

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def test_warm_slot_times_are_read_from_the_platform_benchmark(tmp_path: Path) -> None:
    shutil.copy(RESULTS / "coldstart_cpu.json", tmp_path)
    derived = load_start_times(tmp_path)
    assert "derived" in derived.sources["warm_slot"] and derived.notes
    platform = {
        "paths": {"warm_slot": {"first_answer_ms": {"min": 40.0, "median": 50.0, "max": 90.0}}}
    }
    (tmp_path / "platform.json").write_text(json.dumps(platform))
    measured = load_start_times(tmp_path)
    assert measured.sources["warm_slot"] == "platform.json"
    assert np.allclose(np.sort(measured.samples["warm_slot"]), [0.04, 0.05, 0.09])


def test_the_committed_results_give_a_measured_warm_slot() -> None:
    st = load_start_times(RESULTS)
    assert st.sources["warm_slot"].startswith("platform"), st.sources
