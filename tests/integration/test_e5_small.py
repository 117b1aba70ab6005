"""The real multilingual-e5-small, converted and served by a real worker, against its references.

e5-small is a BertModel with XLM-R's SentencePiece Unigram tokenizer (250,002
pieces) and a 250,037-row embedding table; tools/make_models.py rebuilds it
(../shared/tools/e5small). References: Hugging Face `tokenizers` on the
folder's tokenizer.json for the tokens (TEI's own tokenizer; transformers'
AutoTokenizer differs from it on trailing spaces and the ``▁`` before special
tokens), PyTorch + transformers' ``AutoModel`` for the encoder, and
sentence-transformers' ``Pooling(mean)`` + ``Normalize`` modules (the folder's
modules.json) reproduced in torch, as tests/unit/test_tasks_parity.py checks
them against the library's formulas. sentence-transformers itself is not
installed here (it needs scipy and scikit-learn).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_server_robustness import Worker

pytestmark = [pytest.mark.integration, pytest.mark.parity]

EMBED_TOLERANCE = 1e-4  # max |ours - reference| per embedding component
MULTILINGUAL = (
    "query: how much protein should a female eat",
    "passage: As a general guideline, the CDC's average requirement of protein for women is 46 grams per day.",
    "Привет, как дела? Москва — столица России.",
    "東京は日本の首都です。北京是中国的首都。",
    "서울은 대한민국의 수도이다.",
    "مرحبا بالعالم، القاهرة عاصمة مصر.",
    "नमस्ते दुनिया, दिल्ली भारत की राजधानी है।",
    "Emoji 👍🏽 👨‍👩‍👧 🇫🇷 ❤️ and symbols ™ ① ﬁ",
    "Combining: e\u0301 a\u0300\u0301 n\u0303 (décomposé) Ǆ Ångström",
    "Grüße aus Köln, naïve café — Straße   with  spaces\tand\nlines",
    "Tiếng Việt có dấu; ελληνικά; עברית; ไทย",
    "<mask> and <s> written in the text",
    "x",
)


@pytest.fixture(scope="module")
def folder(model_dir: Callable[[str], Path]) -> Path:
    return model_dir("e5-small")


@pytest.fixture(scope="module")
def w(bundle_for_model: Callable[[str], Path]) -> Iterator[Worker]:
    with Worker(bundle_for_model("e5-small")) as worker:
        yield worker
        worker.terminate()
        assert worker.wait() == 0


def _reference_tokenizer(folder: Path) -> Any:
    tokenizers = pytest.importorskip("tokenizers")
    ref = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    ref.no_padding()
    ref.no_truncation()
    return ref


def _reference_embeddings(folder: Path, texts: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(normalised, unnormalised) mean-pooled embeddings from transformers + tokenizers."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(1)
    ref = _reference_tokenizer(folder)
    ref.enable_truncation(max_length=512)
    ref.enable_padding(pad_id=ref.token_to_id("<pad>"), pad_token="<pad>")
    encs = ref.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in encs])
    mask = torch.tensor([e.attention_mask for e in encs])
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    # sentence-transformers' Pooling(pooling_mode_mean_tokens) then Normalize
    weights = mask.unsqueeze(-1).expand(hidden.size()).float()
    mean = (hidden * weights).sum(1) / torch.clamp(weights.sum(1), min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1).numpy(), mean.numpy()


def test_info_reports_the_xlmr_vocabulary_and_mean_pooling(w: Worker) -> None:
    status, info = w.request("GET", "/info")
    assert status == 200
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 512


def test_embed_matches_sentence_transformers(w: Worker, folder: Path) -> None:
    want, want_raw = _reference_embeddings(folder, MULTILINGUAL)
    status, got = w.request("POST", "/embed", {"inputs": list(MULTILINGUAL)})
    assert status == 200
    got_arr = np.array(got)
    assert got_arr.shape == want.shape == (len(MULTILINGUAL), 384)
    worst = float(np.abs(got_arr - want).max())
    assert worst <= EMBED_TOLERANCE, f"max |diff| {worst:.2e}"
    status, raw = w.request("POST", "/embed", {"inputs": list(MULTILINGUAL), "normalize": False})
    assert status == 200
    assert float(np.abs(np.array(raw) - want_raw).max()) <= EMBED_TOLERANCE
    status, one = w.request("POST", "/embed", {"inputs": MULTILINGUAL[5]})  # alone: no padding
    assert status == 200 and float(np.abs(np.array(one[0]) - want[5]).max()) <= EMBED_TOLERANCE


def test_openai_embeddings_route_gives_the_same_vectors(w: Worker, folder: Path) -> None:
    want, _ = _reference_embeddings(folder, MULTILINGUAL[:4])
    status, got = w.request("POST", "/v1/embeddings", {"input": list(MULTILINGUAL[:4])})
    assert status == 200
    vectors = np.array([d["embedding"] for d in got["data"]])
    assert float(np.abs(vectors - want).max()) <= EMBED_TOLERANCE


def test_tokenize_matches_tokenizers_with_byte_offsets(w: Worker, folder: Path) -> None:
    ref = _reference_tokenizer(folder)
    for add_special in (True, False):
        status, got = w.request(
            "POST", "/tokenize", {"inputs": list(MULTILINGUAL), "add_special_tokens": add_special}
        )
        assert status == 200
        for text, tokens in zip(MULTILINGUAL, got, strict=True):
            want = ref.encode(text, add_special_tokens=add_special)
            assert [t["id"] for t in tokens] == want.ids, text
            for tok, special, (a, b), piece in zip(
                tokens, want.special_tokens_mask, want.offsets, want.tokens, strict=True
            ):
                if special:
                    assert (tok["text"], tok["start"], tok["stop"]) == (piece, None, None)
                else:  # TEI: UTF-8 byte offsets, text the original span
                    assert (tok["start"], tok["stop"]) == (
                        len(text[:a].encode()),
                        len(text[:b].encode()),
                    )
                    assert tok["text"] == text[a:b]


def test_decode_matches_tokenizers(w: Worker, folder: Path) -> None:
    ref = _reference_tokenizer(folder)
    batch = [ref.encode(t).ids for t in MULTILINGUAL]
    for skip in (True, False):
        status, got = w.request("POST", "/decode", {"ids": batch, "skip_special_tokens": skip})
        assert status == 200
        assert got == [ref.decode(ids, skip_special_tokens=skip) for ids in batch]
    status, err = w.request("POST", "/decode", {"ids": [0, 250002]})  # past the vocabulary
    assert status == 422 and "250002" in str(err)


def test_long_input_is_refused_or_truncated_like_the_reference(w: Worker, folder: Path) -> None:
    text = "Привет мир, 東京 e\u0301 " * 200  # about 1,400 tokens
    # truncate absent means the server's --auto-truncate (on by default since TEI 1.9)
    status, err = w.request("POST", "/embed", {"inputs": text, "truncate": False})
    assert status == 422 and "truncate" in str(err)
    status, got = w.request("POST", "/embed", {"inputs": text, "truncate": True})
    assert status == 200
    want, _ = _reference_embeddings(folder, (text,))  # tokenizers truncating at 512
    assert float(np.abs(np.array(got) - want).max()) <= EMBED_TOLERANCE
