"""TEI's request options on real bundles: auto-truncation, truncation direction, dimensions,
and options of the wrong type or null.

The rules are TEI 1.9's (``router/src/http/types.rs``, ``router/src/http/server.rs``,
``core/src/infer.rs``): ``truncate`` absent or null means the server's
``--auto-truncate`` (default true); ``truncation_direction`` ``Left`` keeps the
end of the text; ``dimensions`` cuts the pooled vector and then normalises it;
a boolean or enum field that is not an ``Option`` in TEI refuses null (422).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zerostart.errors import InputError
from zerostart.pipeline import Pipeline

# A retrieval chunk of 400+ words, what LangChain's splitters produce: over MiniLM's 256 tokens.
CHUNK = "Retrieval augmented generation splits long documents into chunks of a few words. " * 34
WIDTH = 384  # all-MiniLM-L6-v2's hidden size


@pytest.fixture(scope="module")
def embed(bundle_for_model: Callable[[str], Path]) -> Pipeline:
    return Pipeline.load(bundle_for_model("minilm-embed"))


@pytest.fixture(scope="module")
def strict(bundle_for_model: Callable[[str], Path]) -> Pipeline:
    return Pipeline.load(bundle_for_model("minilm-embed"), auto_truncate=False)


@pytest.fixture(scope="module")
def sst2(bundle_for_model: Callable[[str], Path]) -> Pipeline:
    return Pipeline.load(bundle_for_model("minilm-sst2"))


@pytest.fixture(scope="module")
def ner(bundle_for_model: Callable[[str], Path]) -> Pipeline:
    return Pipeline.load(bundle_for_model("rampart-ner"))


def answer(pipe: Pipeline, route: str, body: Any) -> Any:
    job = pipe.prepare(route, body)
    return job.finish(pipe.execute(job.encodings))


def refused(pipe: Pipeline, route: str, body: Any) -> InputError:
    with pytest.raises(InputError) as info:
        pipe.prepare(route, body)
    return info.value


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


# -- auto-truncation ---------------------------------------------------------------


@pytest.mark.parametrize("route", ["embed", "embed_all", "v1/embeddings"])
def test_a_long_chunk_is_cut_by_default_as_tei_19_does(embed: Pipeline, route: str) -> None:
    body = {"input": CHUNK} if route == "v1/embeddings" else {"inputs": CHUNK}
    job = embed.prepare(route, body)
    assert len(job.encodings[0].ids) == embed.manifest.max_length == 256
    assert job.encodings[0].truncated


def test_auto_truncate_false_refuses_and_the_request_can_still_ask(strict: Pipeline) -> None:
    for route, body in (
        ("embed", {"inputs": CHUNK}),
        ("embed", {"inputs": CHUNK, "truncate": None}),  # null: the server's setting
        ("v1/embeddings", {"input": CHUNK}),
        ("similarity", {"inputs": {"source_sentence": CHUNK, "sentences": ["a"]}}),
    ):
        err = refused(strict, route, body)
        assert (err.status, err.error_type) == (422, "Validation") and "truncate" in str(err)
    # The error's advice works on every route, /v1/embeddings included (TEI has no
    # `truncate` there and always uses --auto-truncate; we honour the field as well).
    for route, body in (
        ("embed", {"inputs": CHUNK, "truncate": True}),
        ("v1/embeddings", {"input": CHUNK, "truncate": True}),
    ):
        assert len(strict.prepare(route, body).encodings[0].ids) == 256


def test_truncate_false_refuses_even_when_the_server_truncates(embed: Pipeline) -> None:
    err = refused(embed, "embed", {"inputs": CHUNK, "truncate": False})
    assert err.status == 422 and "256" in str(err)


# -- truncation direction -------------------------------------------------------------


@pytest.mark.parametrize("direction", ["Left", "left"])
def test_left_truncation_keeps_the_end_of_the_text(embed: Pipeline, direction: str) -> None:
    text = "first words are dropped " + CHUNK + " the very last words stay"
    body = {"inputs": text, "truncate": True, "truncation_direction": direction}
    enc = embed.prepare("embed", body).encodings[0]
    full = embed.tokenizer.encode(text)
    assert len(enc.ids) == 256 and enc.truncated
    want = [full.ids[0], *full.ids[len(full.ids) - 255 : -1], full.ids[-1]]  # [CLS] tail [SEP]
    assert enc.ids == want
    assert enc.tokens[-6:-1] == ["the", "very", "last", "words", "stay"]
    right = embed.prepare("embed", {**body, "truncation_direction": "Right"}).encodings[0]
    assert right.ids[1:4] == full.ids[1:4] and right.ids != enc.ids


def test_left_truncation_of_token_ids_keeps_the_last_ids(embed: Pipeline) -> None:
    ids = list(range(1000, 1300))
    body = {"inputs": [ids], "truncate": True, "truncation_direction": "Left"}
    assert embed.prepare("embed", body).encodings[0].ids == ids[-256:]


def test_left_truncation_of_a_pair_keeps_the_end_of_each_text(sst2: Pipeline) -> None:
    query = "alpha " * 300 + "query end"
    passage = "beta " * 300 + "passage end"
    body = {"inputs": [query, passage], "truncate": True, "truncation_direction": "left"}
    enc = sst2.prepare("predict", body).encodings[0]
    assert len(enc.ids) == 512
    sep = enc.tokens.index("[SEP]")
    assert enc.tokens[sep - 2 : sep] == ["query", "end"]
    assert enc.tokens[-3:-1] == ["passage", "end"]


# -- dimensions ----------------------------------------------------------------------


def test_dimensions_cut_then_normalise_like_tei(embed: Pipeline) -> None:
    raw = answer(embed, "embed", {"inputs": ["one text", "another"], "normalize": False})
    cut = answer(embed, "embed", {"inputs": ["one text", "another"], "dimensions": 64})
    cut_raw = answer(
        embed, "embed", {"inputs": ["one text", "another"], "dimensions": 64, "normalize": False}
    )
    for r, c, cr in zip(raw, cut, cut_raw, strict=True):
        assert len(c) == len(cr) == 64
        assert cr == pytest.approx(r[:64], abs=1e-6)  # normalize false: the raw prefix
        n = norm(r[:64])
        assert c == pytest.approx([x / n for x in r[:64]], abs=1e-6)  # renormalised prefix
        assert norm(c) == pytest.approx(1.0, abs=1e-6)
    full = answer(embed, "embed", {"inputs": ["one text", "another"]})
    width = answer(embed, "embed", {"inputs": ["one text", "another"], "dimensions": WIDTH})
    for w, f in zip(width, full, strict=True):  # the width itself changes nothing
        assert w == pytest.approx(f, abs=1e-7)


def test_openai_dimensions_float_and_base64(embed: Pipeline) -> None:
    import base64
    import struct

    raw = answer(embed, "embed", {"inputs": "one text", "normalize": False})[0]
    got = answer(embed, "v1/embeddings", {"input": ["one text"], "dimensions": 100})
    vec = got["data"][0]["embedding"]
    n = norm(raw[:100])
    assert len(vec) == 100 and vec == pytest.approx([x / n for x in raw[:100]], abs=1e-6)
    b64 = answer(
        embed,
        "v1/embeddings",
        {"input": "one text", "dimensions": 100, "encoding_format": "base64"},
    )["data"][0]["embedding"]
    assert list(struct.unpack("<100f", base64.b64decode(b64))) == vec


@pytest.mark.parametrize("route", ["embed", "v1/embeddings"])
def test_dimensions_over_the_width_or_not_positive_are_refused(embed: Pipeline, route: str) -> None:
    field = "input" if route == "v1/embeddings" else "inputs"
    for dims, needle in (
        (WIDTH + 1, "smaller than the maximum"),
        (0, "positive"),
        (-3, "positive"),
    ):
        err = refused(embed, route, {field: "x", "dimensions": dims})
        assert (err.status, err.error_type) == (422, "Validation") and needle in str(err)


# -- wrong types and null --------------------------------------------------------------

# Every route that takes truncation_direction, with a valid body for its model.
DIRECTION_ROUTES = [
    ("embed", "embed", {"inputs": "x"}),
    ("embed", "embed_all", {"inputs": "x"}),
    ("embed", "v1/embeddings", {"input": "x"}),
    ("sst2", "predict", {"inputs": "x"}),
    ("sst2", "", {"inputs": "x", "parameters": {}}),
    ("ner", "tokens", {"inputs": "x"}),
]


@pytest.mark.parametrize("bad", [{}, [], ["Left"], None, 1, "up", "LEFT"])
@pytest.mark.parametrize(("model", "route", "body"), DIRECTION_ROUTES)
def test_a_bad_truncation_direction_is_a_422(
    request: pytest.FixtureRequest, model: str, route: str, body: dict[str, Any], bad: Any
) -> None:
    pipe: Pipeline = request.getfixturevalue(model)
    err = refused(pipe, route, {**body, "truncation_direction": bad})
    assert (err.status, err.error_type) == (422, "Validation")
    assert "`truncation_direction` must be 'right' or 'left'" in str(err)


@pytest.mark.parametrize("bad", [{}, [], None])
def test_a_bad_truncation_direction_is_a_422_on_similarity_and_rerank(
    embed: Pipeline, bad: Any
) -> None:
    body = {"inputs": {"source_sentence": "a", "sentences": ["b"]}}
    err = refused(embed, "similarity", {**body, "parameters": {"truncation_direction": bad}})
    assert err.status == 422


def test_rerank_refuses_a_bad_direction_and_null_flags(rerank_bundle: Path) -> None:
    pipe = Pipeline.load(rerank_bundle)
    body = {"query": "q", "texts": ["a"]}
    pipe.prepare("rerank", body)  # control
    for bad in ({}, [], None):
        err = refused(pipe, "rerank", {**body, "truncation_direction": bad})
        assert (err.status, err.error_type) == (422, "Validation")
    for field in ("raw_scores", "return_text"):
        err = refused(pipe, "rerank", {**body, field: None})
        assert err.status == 422 and f"`{field}`" in str(err)


@pytest.mark.parametrize(
    ("model", "route", "body", "field"),
    [
        ("embed", "embed", {"inputs": "x"}, "normalize"),
        ("sst2", "predict", {"inputs": "x"}, "raw_scores"),
        ("embed", "tokenize", {"inputs": "x"}, "add_special_tokens"),
        ("embed", "decode", {"ids": [101]}, "skip_special_tokens"),
        ("embed", "v1/embeddings", {"input": "x"}, "encoding_format"),
    ],
)
def test_null_for_a_boolean_or_enum_field_is_a_422_as_in_tei(
    request: pytest.FixtureRequest, model: str, route: str, body: dict[str, Any], field: str
) -> None:
    pipe: Pipeline = request.getfixturevalue(model)
    pipe.prepare(route, body)  # control: the body without the field is fine
    err = refused(pipe, route, {**body, field: None})
    assert (err.status, err.error_type) == (422, "Validation") and f"`{field}`" in str(err)


def test_null_truncate_and_dimensions_mean_the_default(embed: Pipeline) -> None:
    # TEI's Option fields: null is the same as absent
    body = {"inputs": CHUNK, "truncate": None, "dimensions": None, "prompt_name": None}
    assert len(answer(embed, "embed", body)[0]) == WIDTH
