"""TEI compatibility that real clients hit, on the real worker with the official clients.

A 400-word retrieval chunk (over MiniLM's 256 tokens) sent by
``huggingface_hub.InferenceClient`` and by ``openai.OpenAI`` is cut as TEI 1.9
cuts it (``--auto-truncate`` defaults to true there since 1.9.0), ``dimensions``
shortens and re-normalises the vector, ``truncation_direction="left"`` keeps the
end of the text; the numbers are compared with transformers / PyTorch truncating
the same way. Plus the HTTP-level refusals: a JSON integer past Python's 4,300
digits (400, no traceback), an unhashable ``truncation_direction`` (422),
``/embed_sparse`` on a dense model (424 ``Backend``).
"""

from __future__ import annotations

import base64
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_server_robustness import Worker, serving

pytestmark = pytest.mark.integration

CHUNK = "Retrieval augmented generation splits long documents into chunks of a few words. " * 34
LIMIT = 256  # all-MiniLM-L6-v2's max_seq_length (the bundle's max_input_length)
TOL = 1e-4  # the pipeline parity bound


@pytest.fixture(scope="module")
def w(embed_bundle: Path) -> Iterator[Worker]:
    yield from serving(embed_bundle)


def url(worker: Worker) -> str:
    return f"http://127.0.0.1:{worker.port}"


def reference(folder: Path, text: str, side: str = "right") -> list[float]:
    """sentence-transformers' MiniLM recipe in PyTorch, the tokenizer truncating at LIMIT."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(folder, truncation_side=side)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        batch = tok([text], truncation=True, max_length=LIMIT, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = ((hidden * mask).sum(1) / mask.sum(1))[0]
    return [float(x) for x in pooled]


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def close(a: Any, b: list[float]) -> bool:
    return len(a) == len(b) and max(abs(float(x) - y) for x, y in zip(a, b, strict=True)) < TOL


# -- auto-truncation, the CLI flag and /info --------------------------------------------


def test_info_reports_auto_truncate_and_a_long_chunk_is_cut(w: Worker) -> None:
    assert w.request("GET", "/info")[1]["auto_truncate"] is True
    status, vectors = w.request("POST", "/embed", {"inputs": CHUNK})
    assert status == 200 and len(vectors[0]) == 384
    status, answer = w.request("POST", "/v1/embeddings", {"input": [CHUNK, "short"]})
    assert status == 200 and answer["usage"]["prompt_tokens"] == LIMIT + 3


@pytest.mark.parametrize(
    ("args", "env"), [(("--auto-truncate", "false"), None), ((), "false"), ((), "FALSE")]
)
def test_auto_truncate_off_refuses_long_inputs(
    embed_bundle: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], env: str | None
) -> None:
    if env is not None:
        monkeypatch.setenv("AUTO_TRUNCATE", env)
    for worker in serving(embed_bundle, *args):
        assert worker.request("GET", "/info")[1]["auto_truncate"] is False
        status, err = worker.request("POST", "/embed", {"inputs": CHUNK})
        assert (status, err["error_type"]) == (422, "Validation")
        status, err = worker.request("POST", "/v1/embeddings", {"input": CHUNK})
        assert (status, err["type"]) == (422, "Validation") and '"truncate": true' in err["message"]
        # the error's advice works on the OpenAI route too
        status, _ = worker.request("POST", "/v1/embeddings", {"input": CHUNK, "truncate": True})
        assert status == 200


def test_auto_truncate_flag_without_a_value_and_a_bad_value(embed_bundle: Path) -> None:
    for worker in serving(embed_bundle, "--auto-truncate"):
        assert worker.request("GET", "/info")[1]["auto_truncate"] is True
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    for argv, extra in ((["--auto-truncate", "maybe"], {}), ([], {"AUTO_TRUNCATE": "yes"})):
        proc = subprocess.run(
            [sys.executable, "-m", "zerostart.serve", str(embed_bundle), *argv],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and "expected true or false" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


# -- the official clients, numbers against transformers --------------------------------------


def test_inference_client_embeds_a_long_chunk_like_tei(w: Worker, minilm_embed_dir: Path) -> None:
    hub = pytest.importorskip("huggingface_hub")
    client = hub.InferenceClient(base_url=url(w))
    with pytest.MonkeyPatch.context() as mp:  # conftest's offline flag stops base_url calls too
        mp.setattr(hub.constants, "HF_HUB_OFFLINE", False)
        got = client.feature_extraction(CHUNK)
        left = client.feature_extraction(
            CHUNK + " the end", truncate=True, truncation_direction="left"
        )
    assert close(got[0], unit(reference(minilm_embed_dir, CHUNK)))
    assert close(left[0], unit(reference(minilm_embed_dir, CHUNK + " the end", side="left")))
    assert not close(left[0], got[0].tolist())


def test_openai_client_dimensions_and_a_long_chunk(w: Worker, minilm_embed_dir: Path) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url(w)}/v1", api_key="unused")
    want = reference(minilm_embed_dir, CHUNK)
    answer = client.embeddings.create(
        model="m", input=[CHUNK], dimensions=64, encoding_format="float"
    )
    assert close(answer.data[0].embedding, unit(want[:64]))
    b64 = client.embeddings.create(
        model="m", input=[CHUNK], dimensions=64, encoding_format="base64"
    )
    raw = base64.b64decode(b64.data[0].embedding)  # returned as sent when asked for explicitly
    assert close(struct.unpack("<64f", raw), unit(want[:64]))
    full = client.embeddings.create(
        model="m", input=CHUNK
    )  # base64 chosen and decoded by the client
    assert close(full.data[0].embedding, unit(want))
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.embeddings.create(model="m", input="x", dimensions=385)
    assert "smaller than the maximum embedding dimension" in str(info.value)


# -- refusals at the HTTP level ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"inputs": "x", "dimensions": 1' + b"0" * 4400 + b"}",
        b'{"inputs": [[1' + b"0" * 5000 + b"]]}",
        b'{"inputs": "x", "truncate": -' + b"9" * 4301 + b"}",
    ],
)
def test_an_integer_of_more_than_4300_digits_is_a_400_without_a_traceback(
    w: Worker, raw: bytes
) -> None:
    before = len(w.stderr_text())
    status, err = w.request("POST", "/embed", raw=raw)
    assert (status, err["error_type"]) == (400, "Validation") and "4300 digits" in err["error"]
    assert "Traceback" not in w.stderr_text()[before:]
    assert w.request("POST", "/embed", {"inputs": "still serving"})[0] == 200


@pytest.mark.parametrize("bad", [{}, [], None, ["Left"]])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/embed", {"inputs": "x"}),
        ("/embed_all", {"inputs": "x"}),
        ("/", {"inputs": "x"}),
        ("/v1/embeddings", {"input": "x"}),
    ],
)
def test_a_bad_truncation_direction_is_a_422_not_a_500(
    w: Worker, path: str, body: dict[str, Any], bad: Any
) -> None:
    status, err = w.request("POST", path, {**body, "truncation_direction": bad})
    assert status == 422, err
    kind = err["type"] if path == "/v1/embeddings" else err["error_type"]
    assert kind == "Validation"


def test_similarity_bad_direction_is_a_422(w: Worker) -> None:
    body = {"inputs": {"source_sentence": "a", "sentences": ["b"]}}
    status, err = w.request(
        "POST", "/similarity", {**body, "parameters": {"truncation_direction": {}}}
    )
    assert (status, err["error_type"]) == (422, "Validation")


def test_embed_sparse_on_a_dense_model_is_tei_424_backend(w: Worker) -> None:
    status, err = w.request("POST", "/embed_sparse", {"inputs": "x"})
    assert (status, err["error_type"]) == (424, "Backend") and "embed_sparse" in err["error"]


def test_langchain_openai_embeddings_with_raw_text(w: Worker, minilm_embed_dir: Path) -> None:
    """langchain-openai's ``OpenAIEmbeddings`` as docs/server.md says to set it up.

    By default it sends tiktoken ids (``check_embedding_ctx_length=True``), which
    this route reads as the model's own ids, as TEI does; with
    ``check_embedding_ctx_length=False`` it sends the text and the 400-word chunk
    is cut by ``--auto-truncate``.
    """
    lc = pytest.importorskip("langchain_openai", reason="optional: pip install langchain-openai")
    emb = lc.OpenAIEmbeddings(
        model="m", base_url=f"{url(w)}/v1", api_key="unused", check_embedding_ctx_length=False
    )
    docs = emb.embed_documents([CHUNK, "short text"])
    assert close(docs[0], unit(reference(minilm_embed_dir, CHUNK)))
    assert close(emb.embed_query("short text"), docs[1])
    cut = lc.OpenAIEmbeddings(
        model="m",
        base_url=f"{url(w)}/v1",
        api_key="unused",
        check_embedding_ctx_length=False,
        dimensions=32,
    )
    assert close(cut.embed_query(CHUNK), unit(reference(minilm_embed_dir, CHUNK)[:32]))
