"""Trace formats (Azure Functions 2019 per-minute, timestamp,model) and the ATC'20-shaped generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zerostart.fleet.errors import TraceError
from zerostart.fleet.trace import Trace, read_azure, read_events, read_trace, write_azure
from zerostart.fleet.tracegen import PUBLISHED, GenParams, generate, shape_figures

HEADER = "HashOwner,HashApp,HashFunction,Trigger," + ",".join(str(i) for i in range(1, 1441))


def _row(owner: str, app: str, fn: str, trigger: str, counts: dict[int, int]) -> str:
    cells = [str(counts.get(m, 0)) for m in range(1440)]
    return ",".join([owner, app, fn, trigger, *cells])


def test_azure_functions_are_summed_into_their_app_and_days_joined(tmp_path: Path) -> None:
    d1, d2 = tmp_path / "d01.csv", tmp_path / "d02.csv"
    d1.write_text("\n".join([HEADER, _row("o1", "a1", "f1", "http", {0: 2, 5: 1}),
                             _row("o1", "a1", "f2", "timer", {5: 3}),
                             _row("o2", "a2", "f3", "queue", {1439: 7})]) + "\n")  # fmt: skip
    d2.write_text("\n".join([HEADER, _row("o1", "a1", "f1", "http", {0: 4})]) + "\n")
    trace = read_trace([d1, d2])
    assert trace.names == ("o1/a1", "o2/a2")
    assert trace.minutes == 2880
    a1, a2 = trace.counts
    assert (a1[0], a1[5], a1[1440], a1.sum()) == (2, 4, 4, 10)
    assert (a2[1439], a2.sum()) == (7, 7)
    assert trace.triggers[0] == "http"


def test_generated_trace_round_trips_through_the_azure_format(tmp_path: Path) -> None:
    trace = generate(GenParams(apps=200, days=2, seed=7))
    files = write_azure(trace, tmp_path)
    assert [f.name for f in files] == [
        "invocations_per_function_md.anon.d01.csv", "invocations_per_function_md.anon.d02.csv"
    ]  # fmt: skip
    back = read_azure(files)
    order = [back.names.index(n) for n in trace.names]
    np.testing.assert_array_equal(back.counts[order], trace.counts)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("HashOwner,HashApp,Hash,Trigger,1\n", "not an Azure Functions"),
        (HEADER + "\no,a,f,http,1,2\n", "columns"),
        (HEADER + "\n" + _row("o", "a", "f", "http", {3: -1}) + "\n", "negative"),
        (
            HEADER + "\n" + _row("o", "a", "f", "http", {}).replace(",0", ",x", 1) + "\n",
            "not an integer",
        ),
    ],
)
def test_bad_azure_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=message):
        read_azure([path])


def test_timestamp_model_csv_bins_to_minutes(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("timestamp,model\n1000.0,minilm\n1030,minilm\n1075,ner\n"
                    "1970-01-01T00:20:00+00:00,minilm\n")  # fmt: skip
    trace = read_trace([path])
    assert trace.names == ("minilm", "ner")
    assert trace.counts[0, 0] == 2 and trace.counts[1, 1] == 1
    assert trace.counts[0, (1200 - 1000) // 60] == 1
    assert trace.total == 4


@pytest.mark.parametrize(("text", "message"), [
    ("time,model\n1,a\n", "header"), ("timestamp,model\nsoon,a\n", "ISO 8601"),
    ("timestamp,model\n", "no invocations"), ("timestamp,model\n5,\n", "expected"),
])  # fmt: skip
def test_bad_event_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "e.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=message):
        read_events(path)


def test_generator_reproduces_the_published_shape() -> None:
    """Shahrad et al. ATC'20: 45 % <= 1/h, 81 % <= 1/min, top 18.6 % make 99.6 %, CV > 1 for 40 %."""
    figures = shape_figures(generate(GenParams(apps=10_000, days=1, seed=0)))
    assert figures["frac_le_hourly"] == pytest.approx(PUBLISHED["frac_le_hourly"], abs=0.01)
    assert figures["frac_le_minutely"] == pytest.approx(PUBLISHED["frac_le_minutely"], abs=0.01)
    assert figures["top_share"] == pytest.approx(PUBLISHED["top_share"], abs=0.003)
    assert figures["frac_cv_above_1"] == pytest.approx(PUBLISHED["frac_cv_above_1"], abs=0.03)


def test_shape_figures_measure_what_they_claim() -> None:
    """Hand-made apps with known answers: the figures are measured, not echoed."""
    counts = np.zeros((4, 1440), dtype=np.int64)
    counts[0, ::60] = 1  # 24/day, exactly hourly: <= 1/h, CV 0
    counts[1, ::2] = 1  # 720/day: <= 1/min, CV 0
    counts[2, :] = 100  # busy: > 1/min; minute-resolution CV > 1 (99 zeros per minute)
    counts[3, [0, 1, 2, 700]] = 1  # gaps 1, 1, 698: CV 1.41
    f = shape_figures(Trace(("a", "b", "c", "d"), counts))
    assert f["frac_le_hourly"] == 0.5  # a and d
    assert f["frac_le_minutely"] == 0.75
    assert f["frac_cv_above_1"] == 0.5  # c and d
    assert f["top_share"] == pytest.approx(144000 / (24 + 720 + 144000 + 4))
