"""The official clients against the real worker on loopback, answers checked against transformers.

``huggingface_hub.InferenceClient`` (feature_extraction, sentence_similarity,
text_classification, token_classification) and ``openai.OpenAI`` (embeddings,
models) talk to ``python -m zerostart.serve`` exactly as they talk to
text-embeddings-inference or OpenAI; the numbers they get back are compared
with transformers / PyTorch on the same Hugging Face folder (tolerance 1e-4,
the pipeline parity bound). Skips when a client or the reference is missing.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_server_robustness import Worker, serving

from cross_encoder import one_label_folder

pytestmark = pytest.mark.integration

hub = pytest.importorskip("huggingface_hub", reason="the dev extra installs huggingface_hub")
openai = pytest.importorskip("openai", reason="the dev extra installs openai")
torch = pytest.importorskip("torch", reason="the reference needs PyTorch (dev extra)")
transformers = pytest.importorskip("transformers", reason="the reference (dev extra)")
np = pytest.importorskip("numpy")

TOL = 1e-4  # same bound as the pipeline parity tests
TEXTS = ["I love this film", "The package arrived late and damaged.", "Grüße aus Köln — 東京"]


@pytest.fixture(autouse=True)
def _loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    # tests/conftest.py sets HF_HUB_OFFLINE=1 so nothing tries the model hub; the
    # client obeys it even for a base_url, and ours are all on loopback.
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def embed_worker(embed_bundle: Path) -> Iterator[Worker]:
    yield from serving(embed_bundle)


@pytest.fixture(scope="module")
def sst2_worker(sst2_bundle: Path) -> Iterator[Worker]:
    yield from serving(sst2_bundle)


@pytest.fixture(scope="module")
def ner_worker(ner_bundle: Path) -> Iterator[Worker]:
    yield from serving(ner_bundle)


def url(w: Worker) -> str:
    return f"http://127.0.0.1:{w.port}"


# -- references --------------------------------------------------------------------


def reference_embeddings(folder: Path, texts: list[str]) -> Any:
    """sentence-transformers' all-MiniLM recipe in PyTorch: mean pooling, then L2 normalise."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        batch = tok(texts, padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()


# -- embeddings: huggingface_hub ---------------------------------------------------------


def test_inference_client_feature_extraction(embed_worker: Worker, minilm_embed_dir: Path) -> None:
    client = hub.InferenceClient(base_url=url(embed_worker))
    want = reference_embeddings(minilm_embed_dir, TEXTS)
    one = client.feature_extraction(TEXTS[0])
    assert one.shape == (1, want.shape[1])  # TEI's shape: one vector per input, also for one
    assert np.abs(one[0] - want[0]).max() < TOL
    many = client.feature_extraction(TEXTS)
    assert many.shape == want.shape and np.abs(many - want).max() < TOL
    raw = client.feature_extraction(TEXTS[0], normalize=False)
    assert abs(float(np.linalg.norm(raw[0])) - 1.0) > 1e-3  # the option reached the server
    assert np.abs(raw[0] / np.linalg.norm(raw[0]) - want[0]).max() < TOL


def test_inference_client_sentence_similarity(embed_worker: Worker, minilm_embed_dir: Path) -> None:
    client = hub.InferenceClient(base_url=url(embed_worker))
    got = client.sentence_similarity(TEXTS[0], TEXTS[1:])
    vecs = reference_embeddings(minilm_embed_dir, TEXTS)
    assert got == pytest.approx((vecs[1:] @ vecs[0]).tolist(), abs=TOL)


def test_inference_client_errors_carry_tei_status(embed_worker: Worker) -> None:
    client = hub.InferenceClient(base_url=url(embed_worker))
    with pytest.raises(hub.errors.HfHubHTTPError) as info:
        client.feature_extraction("")
    assert info.value.response.status_code == 400
    assert info.value.response.json()["error_type"] == "Empty"
    with pytest.raises(hub.errors.HfHubHTTPError) as info:
        client.feature_extraction("hello", dimensions=1000)
    assert info.value.response.status_code == 422
    assert "smaller than the maximum embedding dimension" in info.value.response.text


# -- embeddings: openai ------------------------------------------------------------------


def test_openai_embeddings_float_base64_and_usage(
    embed_worker: Worker, minilm_embed_dir: Path
) -> None:
    client = openai.OpenAI(base_url=url(embed_worker) + "/v1", api_key="unused")
    want = reference_embeddings(minilm_embed_dir, TEXTS)
    # the client asks for base64 by default and decodes it itself
    default = client.embeddings.create(model="minilm-embed", input=TEXTS)
    assert [d.index for d in default.data] == [0, 1, 2]
    got = np.array([d.embedding for d in default.data])
    assert np.abs(got - want).max() < TOL
    floats = client.embeddings.create(model="any", input=TEXTS[0], encoding_format="float")
    assert np.abs(np.array(floats.data[0].embedding) - want[0]).max() < TOL
    tok = transformers.AutoTokenizer.from_pretrained(minilm_embed_dir)
    n_tokens = sum(len(tok(t)["input_ids"]) for t in TEXTS)
    assert default.usage.prompt_tokens == default.usage.total_tokens == n_tokens
    assert default.model == client.models.list().data[0].id


def test_openai_embeddings_of_token_ids(embed_worker: Worker, minilm_embed_dir: Path) -> None:
    client = openai.OpenAI(base_url=url(embed_worker) + "/v1", api_key="unused")
    tok = transformers.AutoTokenizer.from_pretrained(minilm_embed_dir)
    ids = tok(TEXTS[1])["input_ids"]  # with [CLS] ... [SEP]: the sequence as the model sees it
    got = client.embeddings.create(model="m", input=[ids], encoding_format="float")
    want = reference_embeddings(minilm_embed_dir, [TEXTS[1]])[0]
    assert np.abs(np.array(got.data[0].embedding) - want).max() < TOL
    assert got.usage.prompt_tokens == len(ids)
    # a raw base64 answer is little-endian float32, as OpenAI's
    status, body = embed_worker.request(
        "POST", "/v1/embeddings", {"input": ids, "encoding_format": "base64"}
    )
    raw = base64.b64decode(body["data"][0]["embedding"])
    floats = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert status == 200 and np.abs(np.array(floats) - want).max() < TOL


@pytest.mark.parametrize(
    ("kwargs", "exc", "status", "kind"),
    [
        ({"input": ""}, "BadRequestError", 400, "Empty"),
        ({"input": []}, "BadRequestError", 400, "Empty"),
        ({"input": "hi", "dimensions": 385}, "UnprocessableEntityError", 422, "Validation"),
        ({"input": [[10**9]]}, "UnprocessableEntityError", 422, "Tokenizer"),
        (
            {"input": "word " * 600, "extra_body": {"truncate": False}},
            "UnprocessableEntityError",
            422,
            "Validation",
        ),
    ],
)
def test_openai_errors(
    embed_worker: Worker, kwargs: dict[str, Any], exc: str, status: int, kind: str
) -> None:
    client = openai.OpenAI(base_url=url(embed_worker) + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(getattr(openai, exc)) as info:
        client.embeddings.create(model="m", **kwargs)
    assert info.value.status_code == status
    assert info.value.body["type"] == kind and info.value.body["code"] == status
    assert client.embeddings.create(model="m", input="still serving").data


def test_openai_dimensions_equal_to_the_width_is_accepted(embed_worker: Worker) -> None:
    client = openai.OpenAI(base_url=url(embed_worker) + "/v1", api_key="unused")
    got = client.embeddings.create(model="m", input="hi", dimensions=384, encoding_format="float")
    assert len(got.data[0].embedding) == 384


# -- sequence classification ---------------------------------------------------------------


def test_inference_client_text_classification(sst2_worker: Worker, minilm_sst2_dir: Path) -> None:
    client = hub.InferenceClient(base_url=url(sst2_worker))
    pipe = transformers.pipeline("text-classification", model=str(minilm_sst2_dir), top_k=None)
    for text in TEXTS:
        got = client.text_classification(text)
        want = pipe([text])[0]  # all labels, best first
        assert [g.label for g in got] == [w["label"] for w in want]
        assert [g.score for g in got] == pytest.approx([w["score"] for w in want], abs=TOL)
    top = client.text_classification(TEXTS[0], top_k=1, function_to_apply="none")
    logits = pipe([TEXTS[0]], function_to_apply="none")[0]
    assert len(top) == 1 and top[0].label == logits[0]["label"]
    assert top[0].score == pytest.approx(logits[0]["score"], abs=TOL)


# -- token classification ------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["simple", "first", "max", "average", None])
def test_inference_client_token_classification(
    ner_worker: Worker, rampart_ner_dir: Path, strategy: str | None
) -> None:
    client = hub.InferenceClient(base_url=url(ner_worker))
    text = "My name is Sarah Johnson and I live at 42 Baker Street, Springfield."
    got = client.token_classification(text, aggregation_strategy=strategy)
    pipe = transformers.pipeline(
        "token-classification",
        model=str(rampart_ner_dir),
        aggregation_strategy=strategy or "simple",
    )
    want = pipe(text)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert (g.entity_group, g.word, g.start, g.end) == (
            w["entity_group"],
            w["word"],
            w["start"],
            w["end"],
        )
        assert g.score == pytest.approx(float(w["score"]), abs=TOL)


# -- a cross-encoder (one label, no problem_type) and a broken model ----------------------------


@pytest.fixture(scope="module")
def reranker(rerank_dir: Path, rerank_bundle: Path) -> Iterator[Any]:
    with Worker(rerank_bundle) as w:
        yield w, rerank_dir
        w.terminate()
        assert w.wait() == 0


def test_one_label_model_gets_the_sigmoid_like_transformers(reranker: Any) -> None:
    worker, folder = reranker
    pipe = transformers.pipeline("text-classification", model=str(folder), top_k=None)
    want = pipe([TEXTS[0]])[0][0]["score"]
    logit = pipe([TEXTS[0]], function_to_apply="none")[0][0]["score"]
    assert 0.0 < want < 1.0 and abs(want - logit) > 1e-3  # a sigmoid, not the raw logit
    status, got = worker.request("POST", "/predict", {"inputs": TEXTS[0]})
    assert status == 200 and got[0]["score"] == pytest.approx(want, abs=TOL)
    _, info = worker.request("GET", "/info")
    assert "reranker" in info["model_type"] and "rerank" in info["routes"]


def test_rerank_against_transformers(reranker: Any) -> None:
    worker, folder = reranker
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    query = "what is in the package?"
    with torch.no_grad():
        logits = model(**tok([query] * 3, TEXTS, padding=True, return_tensors="pt")).logits[:, 0]
    want = torch.sigmoid(logits).tolist()
    body = {"query": query, "texts": TEXTS, "return_text": True}
    for path in ("/rerank", "/"):  # POST / is /rerank for a cross-encoder, as in TEI
        status, ranks = worker.request("POST", path, body)
        assert status == 200, ranks
        assert [r["index"] for r in ranks] == sorted(range(3), key=lambda i: -want[i])
        for r in ranks:
            assert r["score"] == pytest.approx(want[r["index"]], abs=TOL)
            assert r["text"] == TEXTS[r["index"]]
    status, raw = worker.request(
        "POST", "/rerank", {"query": query, "texts": TEXTS[:1], "raw_scores": True}
    )
    assert raw[0]["score"] == pytest.approx(float(logits[0]), abs=TOL)
    status, err = worker.request("POST", "/rerank", {"query": query, "texts": []})
    assert (status, err["error_type"]) == (400, "Empty")


def test_a_model_that_produces_nan_gets_424_and_the_worker_keeps_serving(
    minilm_sst2_dir: Path, tmp_path: Path
) -> None:
    from zerostart.errors import ConvertError
    from zerostart.model.convert import convert

    folder = one_label_folder(minilm_sst2_dir, tmp_path / "hf", nan_bias=True)
    with pytest.raises(ConvertError, match=r"'classifier\.bias' holds 1 NaN"):
        convert(folder, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    convert(folder, tmp_path / "bundle", allow_nonfinite=True)
    with Worker(tmp_path / "bundle") as w:
        for path, body in (
            ("/predict", {"inputs": "hello"}),
            ("/predict", {"inputs": [["a"], ["b"]], "raw_scores": True}),
            ("/rerank", {"query": "q", "texts": ["a", "b"]}),
            ("/", {"inputs": "hello", "parameters": {}}),
        ):
            status, body = w.request("POST", path, body)
            assert (status, body["error_type"]) == (424, "Backend"), body
            # the route's own check names the input and the fix (the JSON encoder's
            # refusal of NaN, a last resort, would say less)
            assert "non-finite score" in body["error"] and "zerostart convert" in body["error"]
        assert w.request("GET", "/health")[0] == 200
        status, tokens = w.request("POST", "/tokenize", {"inputs": "still serving"})
        assert status == 200 and tokens[0][1]["text"] == "still"
        w.terminate()
        assert w.wait() == 0
