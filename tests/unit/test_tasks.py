"""Task heads on hand-made numbers: scores, ordering, pooling with padding, normalisation,
and the token-classification grouping rules. Needs numpy only; tests/unit/test_tasks_parity.py
checks the same functions against transformers on real models."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from zerostart.errors import InputError
from zerostart.tasks import aggregate_entities, classify, normalize, pool


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(x - max(row)) for x in row]
    return [e / sum(exps) for e in exps]


# ------------------------------------------------------------------------------ classify


def test_single_label_is_softmax_sorted_best_first() -> None:
    logits = np.array([0.5, 2.0, -1.0], dtype=np.float32)
    got = classify(logits, ["a", "b", "c"], "single_label_classification")
    expected = dict(zip("abc", _softmax([0.5, 2.0, -1.0]), strict=True))
    assert [r["label"] for r in got] == ["b", "a", "c"]
    for row in got:
        assert row["score"] == pytest.approx(expected[row["label"]], rel=1e-6)
        assert type(row["score"]) is float
    assert sum(r["score"] for r in got) == pytest.approx(1.0, abs=1e-6)


def test_short_problem_type_names_are_accepted() -> None:
    logits = np.array([1.0, -1.0], dtype=np.float32)
    assert classify(logits, ["x", "y"], "single_label") == classify(
        logits, ["x", "y"], "single_label_classification"
    )
    assert classify(logits, ["x", "y"], "multi_label") == classify(
        logits, ["x", "y"], "multi_label_classification"
    )


def test_softmax_survives_huge_logits() -> None:
    got = classify(np.array([1000.0, 999.0], dtype=np.float32), ["hi", "lo"], "single_label")
    assert got[0]["score"] == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-6)
    assert all(math.isfinite(r["score"]) for r in got)


def test_multi_label_is_independent_sigmoids() -> None:
    logits = np.array([3.0, -2.0, 0.0, 1.0], dtype=np.float32)
    got = classify(logits, ["toxic", "insult", "threat", "spam"], "multi_label_classification")
    assert [r["label"] for r in got] == ["toxic", "spam", "threat", "insult"]
    for row, x in zip(got, [3.0, 1.0, 0.0, -2.0], strict=True):
        assert row["score"] == pytest.approx(1 / (1 + math.exp(-x)), rel=1e-6)
    assert sum(r["score"] for r in got) > 1.5  # not a distribution


def test_regression_and_raw_scores_return_logits() -> None:
    logits = np.array([-0.25, 4.5], dtype=np.float32)
    reg = classify(logits, ["a", "b"], "regression")
    raw = classify(logits, ["a", "b"], "single_label", raw_scores=True)
    assert reg == raw == [{"label": "b", "score": 4.5}, {"label": "a", "score": -0.25}]


def test_one_logit_single_label_uses_sigmoid_like_transformers() -> None:
    got = classify(np.array([0.0], dtype=np.float32), ["LABEL_0"], "single_label_classification")
    assert got == [{"label": "LABEL_0", "score": 0.5}]


def test_ties_keep_label_order() -> None:
    got = classify(np.zeros(3, dtype=np.float32), ["first", "second", "third"], "single_label")
    assert [r["label"] for r in got] == ["first", "second", "third"]


def test_classify_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="problem_type"):
        classify(np.zeros(2), ["a", "b"], "ranking")
    with pytest.raises(InputError, match="one row of 3 logits"):
        classify(np.zeros(2), ["a", "b", "c"], "single_label")
    with pytest.raises(InputError, match="one row"):
        classify(np.zeros((1, 2)), ["a", "b"], "single_label")


# ------------------------------------------------------------------------ pool/normalize


def test_mean_pool_ignores_padding() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    hidden = np.full((2, 5, 4), 1e6)  # padding rows hold garbage that must not leak in
    hidden[0, :3], hidden[1] = a, b
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    got = pool(hidden, mask, "mean")
    np.testing.assert_allclose(got[0], a.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got[1], b.mean(axis=0), rtol=1e-12)


def test_mean_pool_of_an_empty_row_is_zero_not_nan() -> None:
    got = pool(np.ones((1, 2, 3), dtype=np.float32), np.zeros((1, 2), dtype=np.int64), "mean")
    assert np.array_equal(got, np.zeros((1, 3)))


def test_mean_pool_keeps_float32() -> None:
    hidden = np.ones((1, 2, 3), dtype=np.float32)
    assert pool(hidden, np.ones((1, 2), dtype=np.int64), "mean").dtype == np.float32


def test_cls_pool_takes_the_first_token() -> None:
    hidden = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    got = pool(hidden, np.array([[1, 1, 0], [1, 0, 0]]), "cls")
    assert np.array_equal(got, hidden[:, 0])


def test_pool_rejects_unknown_mode_and_shapes() -> None:
    with pytest.raises(InputError, match="cls, mean"):
        pool(np.zeros((1, 2, 3)), np.ones((1, 2)), "max")
    with pytest.raises(InputError, match="pool expects"):
        pool(np.zeros((1, 2, 3)), np.ones((1, 3)), "mean")


def test_normalize_gives_unit_rows_and_keeps_zero_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-20, 0.0]], dtype=np.float32)
    got = normalize(x)
    np.testing.assert_allclose(got[0], [0.6, 0.8], rtol=1e-7)
    assert np.array_equal(got[1], [0.0, 0.0])
    assert np.all(np.isfinite(got))
    assert got[2, 0] == pytest.approx(1e-20 / 1e-12, rel=1e-5)  # eps floor, as torch does


# --------------------------------------------------------------------- aggregate_entities

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _wordpiece_to_string(tokens: Sequence[str]) -> str:
    return " ".join(tokens).replace(" ##", "")


def _logits(rows: list[tuple[int, float]]) -> np.ndarray:
    """One token per row: (label index, how sure); the rest share what is left."""
    out = np.zeros((len(rows), len(LABELS)), dtype=np.float32)
    for i, (label, strength) in enumerate(rows):
        out[i, label] = strength
    return out


# "[CLS] jo ##hann lives in new york [SEP]"
TEXT = "Johann lives in New York"
TOKENS = ["[CLS]", "jo", "##hann", "lives", "in", "new", "york", "[SEP]"]
OFFSETS = [(0, 0), (0, 2), (2, 6), (7, 12), (13, 15), (16, 19), (20, 24), (0, 0)]
SPECIAL = [1, 0, 0, 0, 0, 0, 0, 1]
IDS = list(range(len(TOKENS)))
# jo: B-PER, ##hann: I-LOC (disagrees with its word), new: B-LOC, york: I-LOC
LOGITS = _logits([(0, 5), (1, 4), (4, 6), (0, 5), (0, 5), (3, 5), (4, 5), (0, 5)])


def _run(strategy: str, **kwargs: object) -> list[dict[str, object]]:
    args: dict[str, object] = {
        "text": TEXT,
        "tokens": TOKENS,
        "ids": IDS,
        "offsets": OFFSETS,
        "special_tokens_mask": SPECIAL,
        "logits": LOGITS,
        "labels": LABELS,
        "strategy": strategy,
        "tokens_to_string": _wordpiece_to_string,
    }
    args.update(kwargs)
    return aggregate_entities(**args)  # type: ignore[arg-type]


def _p(row: np.ndarray, k: int) -> float:
    return _softmax([float(v) for v in row])[k]


def test_none_returns_every_non_o_token_with_its_index() -> None:
    got = _run("none")
    assert [(e["entity"], e["index"], e["word"], e["start"], e["end"]) for e in got] == [
        ("B-PER", 1, "jo", 0, 2),
        ("I-LOC", 2, "##hann", 2, 6),
        ("B-LOC", 5, "new", 16, 19),
        ("I-LOC", 6, "york", 20, 24),
    ]
    assert got[0]["score"] == pytest.approx(_p(LOGITS[1], 1), rel=1e-6)
    assert all(type(e["score"]) is float for e in got)


def test_simple_groups_b_then_i_of_the_same_tag() -> None:
    got = _run("simple")
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got] == [
        ("PER", "jo", 0, 2),
        ("LOC", "##hann", 2, 6),  # simple may split a word: I-LOC after B-PER opens a new group
        ("LOC", "new york", 16, 24),
    ]
    mean = (_p(LOGITS[5], 3) + _p(LOGITS[6], 4)) / 2
    assert got[2]["score"] == pytest.approx(mean, rel=1e-6)
    assert "index" not in got[0]


def test_first_takes_the_first_subword_label() -> None:
    got = _run("first")
    first = got[0]
    assert (first["entity_group"], first["word"], first["start"], first["end"]) == (
        "PER",
        "johann",
        0,
        6,
    )
    assert got[0]["score"] == pytest.approx(_p(LOGITS[1], 1), rel=1e-6)


def test_max_takes_the_most_confident_subword() -> None:
    got = _run("max")
    assert (got[0]["entity_group"], got[0]["word"]) == ("LOC", "johann")
    assert [e["word"] for e in got] == ["johann", "new york"]
    assert got[0]["score"] == pytest.approx(_p(LOGITS[2], 4), rel=1e-6)


def test_average_averages_subword_scores_before_the_argmax() -> None:
    got = _run("average")
    avg = [(_p(LOGITS[1], k) + _p(LOGITS[2], k)) / 2 for k in range(len(LABELS))]
    best = int(np.argmax(avg))
    assert got[0]["entity_group"] == LABELS[best].split("-", 1)[-1]
    assert got[0]["score"] == pytest.approx(avg[best], rel=1e-6)


def test_ignore_labels_and_unknown_tokens() -> None:
    got = _run("simple", ignore_labels=["O", "LOC"])
    assert [e["entity_group"] for e in got] == ["PER"]
    unk = _run("none", tokens=["[CLS]", "[UNK]", *TOKENS[2:]])
    assert unk[0]["word"] == "Jo"  # [UNK] takes the text it covers
    first = _run("first", tokens=["[CLS]", "[UNK]", *TOKENS[2:]])
    assert (first[0]["word"], first[0]["end"]) == ("Johann", 6)  # "##hann" still joins it


def test_a_b_label_opens_a_new_group_even_for_the_same_tag() -> None:
    logits = LOGITS.copy()
    logits[6] = 0
    logits[6, 3] = 5  # "york": B-LOC right after "new": B-LOC
    got = _run("simple", logits=logits)
    assert [(e["entity_group"], e["word"]) for e in got][-2:] == [("LOC", "new"), ("LOC", "york")]


def test_labels_without_bio_prefix_merge_when_equal() -> None:
    labels = ["$KEEP", "$DELETE"]
    logits = np.array([[0, 0], [5, 0], [5, 0], [0, 5], [0, 0]], dtype=np.float32)
    got = aggregate_entities(
        text="a b c",
        tokens=["[CLS]", "a", "b", "c", "[SEP]"],
        ids=[0, 1, 2, 3, 4],
        offsets=[(0, 0), (0, 1), (2, 3), (4, 5), (0, 0)],
        special_tokens_mask=[1, 0, 0, 0, 1],
        logits=logits,
        labels=labels,
        strategy="simple",
        ignore_labels=(),
        tokens_to_string=_wordpiece_to_string,
    )
    assert [(e["entity_group"], e["word"]) for e in got] == [("$KEEP", "a b"), ("$DELETE", "c")]


def test_unknown_strategy_names_the_valid_ones() -> None:
    with pytest.raises(InputError, match="none, simple, first, average, max"):
        _run("longest")


def test_inconsistent_lengths_are_refused() -> None:
    with pytest.raises(InputError, match="disagree"):
        _run("simple", offsets=OFFSETS[:-1])


def test_tasks_import_only_the_standard_library() -> None:
    """The worker imports zerostart.tasks on its cold-start path: no numpy (pool/normalize,
    the numpy reference, load it on first use)."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src"
    code = (
        "import sys; import zerostart.tasks; print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    heavy = {"torch", "transformers", "tokenizers", "safetensors", "onnx", "onnxruntime", "h11"}
    assert not (heavy | {"numpy"}) & set(ast.literal_eval(out)), out
