"""TEI's remaining routes on the real worker: shapes, references, status codes and error classes.

References: Hugging Face `tokenizers` for /tokenize and /decode, PyTorch +
transformers for /embed_all; TEI's own router code
(``router/src/http/server.rs``) for the shapes and the error classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_server_robustness import Worker

pytestmark = pytest.mark.integration

tokenizers = pytest.importorskip("tokenizers", reason="the reference tokenizer (dev extra)")

TEXT = "Grüße aus Köln, naïve café — 東京 [SEP] done."


@pytest.fixture(scope="module")
def w(embed_bundle: Path) -> Iterator[Worker]:
    with Worker(embed_bundle, "--max-body-bytes", "65536") as worker:
        yield worker
        worker.terminate()
        assert worker.wait() == 0


def reference(folder: Path) -> Any:
    ref = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    ref.no_padding()  # the shipped file pads to 128
    ref.no_truncation()
    return ref


def test_tokenize_matches_tokenizers_with_byte_offsets(w: Worker, minilm_embed_dir: Path) -> None:
    ref = reference(minilm_embed_dir)
    for add_special in (True, False):
        status, got = w.request(
            "POST", "/tokenize", {"inputs": [TEXT, "hi"], "add_special_tokens": add_special}
        )
        assert status == 200 and len(got) == 2
        want = ref.encode(TEXT, add_special_tokens=add_special)
        data = TEXT.encode()
        assert [t["id"] for t in got[0]] == want.ids
        for tok, special, (a, b), piece in zip(
            got[0], want.special_tokens_mask, want.offsets, want.tokens, strict=True
        ):
            assert tok["special"] == bool(special)
            if special:
                assert (tok["text"], tok["start"], tok["stop"]) == (piece, None, None)
            else:  # TEI's start/stop are UTF-8 byte offsets; text is the original span
                start, stop = len(TEXT[:a].encode()), len(TEXT[:b].encode())
                assert (tok["start"], tok["stop"]) == (start, stop)
                assert tok["text"] == data[start:stop].decode() == TEXT[a:b]
    status, single = w.request("POST", "/tokenize", {"inputs": "hi"})
    assert status == 200 and isinstance(single[0], list)  # always a batch, as in TEI


def test_decode_matches_tokenizers(w: Worker, minilm_embed_dir: Path) -> None:
    ref = reference(minilm_embed_dir)
    ids = ref.encode(TEXT).ids
    for skip in (True, False):
        status, got = w.request("POST", "/decode", {"ids": ids, "skip_special_tokens": skip})
        assert (status, got) == (200, [ref.decode(ids, skip_special_tokens=skip)])
    status, got = w.request("POST", "/decode", {"ids": [ids, ids[:3]]})
    assert got == [ref.decode(ids), ref.decode(ids[:3])]


def test_embed_all_is_every_tokens_hidden_state(w: Worker, minilm_embed_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(minilm_embed_dir)
    model = transformers.AutoModel.from_pretrained(minilm_embed_dir).eval()
    with torch.no_grad():
        want = model(**tok("a short text", return_tensors="pt")).last_hidden_state[0].numpy()
    status, got = w.request("POST", "/embed_all", {"inputs": "a short text"})
    assert status == 200 and len(got) == 1 and len(got[0]) == want.shape[0]
    assert (
        max(
            abs(a - b) for r, s in zip(got[0], want, strict=True) for a, b in zip(r, s, strict=True)
        )
        < 1e-4
    )


def test_root_health_ping_models_and_info(w: Worker) -> None:
    assert w.request("GET", "/")[0] == 200
    assert w.request("GET", "/ping")[0] == 200
    status, models = w.request("GET", "/v1/models")
    _, info = w.request("GET", "/info")
    assert status == 200 and models["data"][0]["id"] == info["model_id"] == "minilm-embed"
    for field in (  # TEI's Info, required fields (docs/openapi.json)
        "model_id",
        "model_dtype",
        "served_model_name",
        "model_type",
        "max_concurrent_requests",
        "max_input_length",
        "max_batch_tokens",
        "max_client_batch_size",
        "auto_truncate",
        "tokenization_workers",
        "version",
    ):
        assert field in info, field
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    status, vectors = w.request("POST", "/", {"inputs": "hi"})  # POST / is /embed here
    assert status == 200 and len(vectors) == 1 and len(vectors[0]) == info["hidden_size"]
    status, sims = w.request(
        "POST", "/", {"inputs": {"source_sentence": "hi", "sentences": ["hello", "bye"]}}
    )
    assert status == 200 and len(sims) == 2 and all(-1 <= s <= 1 for s in sims)


# Every overlapping error path against TEI's class and status (router/src/http/server.rs,
# core/src/tokenization.rs): Empty -> 400, Validation/Tokenizer -> 422, Backend -> 424.
@pytest.mark.parametrize(
    ("path", "body", "status", "error_type"),
    [
        ("/embed", {"inputs": ""}, 400, "Empty"),
        ("/embed", {"inputs": []}, 400, "Empty"),
        ("/embed", {"inputs": ["a", ""]}, 400, "Empty"),
        ("/embed", {"inputs": ["x"] * 33}, 422, "Validation"),
        ("/embed", {"inputs": "word " * 600, "truncate": False}, 422, "Validation"),
        ("/embed", {"inputs": "x", "prompt_name": "query"}, 422, "Validation"),
        ("/embed", {"inputs": "x", "dimensions": 0}, 422, "Validation"),
        ("/embed", {"inputs": [[10**9]]}, 422, "Tokenizer"),
        ("/embed_all", {"inputs": []}, 400, "Empty"),
        ("/similarity", {"inputs": {"source_sentence": "a", "sentences": []}}, 400, "Empty"),
        (
            "/similarity",
            {"inputs": {"source_sentence": "a", "sentences": ["b"] * 32}},
            422,
            "Validation",
        ),
        ("/tokenize", {"inputs": ""}, 400, "Empty"),
        ("/tokenize", {"inputs": []}, 400, "Empty"),
        ("/decode", {"ids": []}, 400, "Empty"),
        ("/decode", {"ids": [[]]}, 400, "Empty"),
        ("/decode", {"ids": [10**9]}, 422, "Tokenizer"),
        ("/predict", {"inputs": "x"}, 424, "Backend"),  # not a classifier
        ("/rerank", {"query": "q", "texts": ["a"]}, 424, "Backend"),  # not a re-ranker
        ("/tokens", {"inputs": "x"}, 424, "Backend"),
    ],
)
def test_error_classes_match_tei(
    w: Worker, path: str, body: dict[str, Any], status: int, error_type: str
) -> None:
    got, answer = w.request("POST", path, body)
    assert (got, answer["error_type"]) == (status, error_type), answer
    assert w.request("POST", "/embed", {"inputs": "still serving"})[0] == 200
