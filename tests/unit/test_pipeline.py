"""Request validation and batching in zerostart.pipeline, on real bundles.

TEI's input rules ("a" one text, ["a", "b"] one pair, [["a"], ["b", "c"]] a
batch), clear 4xx errors for every kind of bad input, and the guarantee that
dynamic batching (any mix of lengths in one execute call) gives each input
the answer it gets alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zerostart.errors import EngineError, InputError
from zerostart.pipeline import Pipeline


@pytest.fixture(scope="module")
def sst2(bundle_for_model: Callable[[str], Path]) -> Pipeline:
    return Pipeline.load(bundle_for_model("minilm-sst2"), max_client_batch_size=4)


@pytest.fixture(scope="module")
def embed(bundle_for_model: Callable[[str], Path]) -> Pipeline:
    return Pipeline.load(bundle_for_model("minilm-embed"))


def answer(pipe: Pipeline, route: str, body: Any) -> Any:
    job = pipe.prepare(route, body)
    return job.finish(pipe.execute(job.encodings))


def test_tei_input_shapes(sst2: Pipeline) -> None:
    single = answer(sst2, "predict", {"inputs": "I love this"})
    assert [set(x) for x in single] == [{"label", "score"}] * 2
    assert single[0]["score"] >= single[1]["score"]
    assert abs(sum(x["score"] for x in single) - 1.0) < 1e-5
    pair = answer(sst2, "predict", {"inputs": ["I love this", "so do I"]})
    assert isinstance(pair[0], dict)  # one pair -> one answer, not a batch
    batch = answer(sst2, "predict", {"inputs": [["I love this"], ["I love this", "so do I"]]})
    assert len(batch) == 2
    for got, want in ((batch[0], single), (batch[1], pair)):
        assert [x["label"] for x in got] == [x["label"] for x in want]
        assert [x["score"] for x in got] == pytest.approx([x["score"] for x in want], abs=1e-6)


def test_raw_scores_are_logits(sst2: Pipeline) -> None:
    raw = answer(sst2, "predict", {"inputs": "I love this", "raw_scores": True})
    probs = answer(sst2, "predict", {"inputs": "I love this"})
    logits = np.array([x["score"] for x in sorted(raw, key=lambda x: x["label"])])
    soft = np.exp(logits - logits.max())
    soft /= soft.sum()
    want = [x["score"] for x in sorted(probs, key=lambda x: x["label"])]
    assert soft == pytest.approx(want, abs=1e-6)


# TEI's classes and statuses (router/src/lib.rs ErrorType, router/src/http/server.rs):
# Empty -> 400, Validation -> 422 (a batch over the limit and an over-long text too).
@pytest.mark.parametrize(
    ("body", "status", "error_type", "needle"),
    [
        ([1, 2], 422, "Validation", "JSON object"),
        ({}, 422, "Validation", "missing field `inputs`"),
        ({"inputs": 5}, 422, "Validation", "must be a string"),
        ({"inputs": ""}, 400, "Empty", "cannot be empty"),
        ({"inputs": []}, 400, "Empty", "cannot be empty"),
        ({"inputs": [["a"], [""]]}, 400, "Empty", "`inputs[1]` cannot be empty"),
        ({"inputs": ["", ""]}, 400, "Empty", "cannot be empty"),
        ({"inputs": ["a", "b", "c"]}, 422, "Validation", "at most 2"),
        ({"inputs": [["a"], [1]]}, 422, "Validation", "`inputs[1][0]` must be a string"),
        ({"inputs": [["a", "b", "c"]]}, 422, "Validation", "[text, text_pair]"),
        ({"inputs": [["a"]] * 5}, 422, "Validation", "maximum allowed batch size 4"),
        ({"inputs": "a", "truncate": "yes"}, 422, "Validation", "`truncate` must be true"),
        ({"inputs": "word " * 600, "truncate": False}, 422, "Validation", '"truncate": true'),
    ],
)
def test_bad_input_gets_a_clear_error(
    sst2: Pipeline, body: Any, status: int, error_type: str, needle: str
) -> None:
    with pytest.raises(InputError) as info:
        sst2.prepare("predict", body)
    assert (info.value.status, info.value.error_type) == (status, error_type)
    assert needle in str(info.value)


def test_a_pair_with_one_empty_text_is_a_valid_input(sst2: Pipeline) -> None:
    # TEI refuses a pair only when both texts are empty (EncodingInput::is_empty)
    assert len(answer(sst2, "predict", {"inputs": ["a film", ""]})) == 2


def test_truncate_accepts_long_text(sst2: Pipeline) -> None:
    job = sst2.prepare("predict", {"inputs": "word " * 600, "truncate": True})
    assert len(job.encodings[0].ids) == sst2.manifest.max_length


def test_wrong_route_names_the_served_one(sst2: Pipeline) -> None:
    # TEI: "Model is not an embedding model" is a Backend error, 424
    with pytest.raises(InputError, match="it serves /decode, /predict, /tokenize") as info:
        sst2.prepare("embed", {"inputs": "x"})
    assert (info.value.status, info.value.error_type) == (424, "Backend")


def test_dynamic_batching_gives_each_input_its_own_answer(embed: Pipeline) -> None:
    """Mixed lengths in one execute call == each alone (padding never leaks)."""
    texts = ["short", "a somewhat longer sentence about trains and weather", "x " * 200]
    alone = [embed.execute(embed.prepare("embed", {"inputs": t}).encodings)[0] for t in texts]
    together = embed.execute(
        [e for t in texts for e in embed.prepare("embed", {"inputs": t}).encodings]
    )
    for a, b in zip(alone, together, strict=True):
        assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) < 1e-5


def test_embed_normalises_by_default(embed: Pipeline) -> None:
    vecs = np.array(answer(embed, "embed", {"inputs": ["one", "two"]}))
    assert vecs.shape == (2, embed.manifest.config.hidden_size)
    assert np.linalg.norm(vecs, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_gpu_bundle_without_kernels_is_refused_with_the_fix(
    model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    from zerostart.model.convert import convert

    convert(model_dir("minilm-embed"), tmp_path / "gpu", device="cuda")
    with pytest.raises(EngineError, match="no compiled kernels") as info:
        Pipeline.load(tmp_path / "gpu")
    assert "--arch" in str(info.value)
