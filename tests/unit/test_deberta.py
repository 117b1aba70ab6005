"""DeBERTa-v2/v3: convert, the numpy reference, the native kernels, against transformers.

Random tiny models built from configs by transformers (tests/deberta_models.py);
the reference is transformers fp32 eager on the same ids. Every engine we have
runs each case: the numpy reference (``engine.deberta``) and the serving
engine (``NativeDebertaEngine``) on each kernel build this CPU runs
(portable, AVX2, AVX-512). Sequence lengths 1, 127 and 512 (the log buckets of
a 16-bucket config start at distance 8, so 127 and 512 cross them).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deberta_models import deberta_tokenizer, tiny_deberta
from engine_reference import transformers_reference
from int8_compare import assert_int8_tracks_float32
from zerostart.bundle.folder import Bundle
from zerostart.engine.deberta import DebertaEngine
from zerostart.engine.deberta_native import NativeDebertaEngine
from zerostart.engine.native import NativeKernels, cpu_flags
from zerostart.errors import ConvertError
from zerostart.model.convert import convert
from zerostart.model.deberta import relative_index

pytestmark = pytest.mark.parity

TOLERANCE = 1e-4
VOCAB = 99
ARCHS = ("x86-64", "x86-64-v3", "x86-64-v4")


def _batch(seq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = [seq, max(1, seq // 3), 1]
    ids = np.zeros((len(lengths), seq), np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1, VOCAB, n)
        mask[i, :n] = 1
    return ids, mask


def _engines(dst: Path) -> list[tuple[str, Any]]:
    """(name, forward) of every engine that can run the bundle here."""
    bundle = Bundle.open(dst, verify="full")
    m = bundle.manifest
    out: list[tuple[str, Any]] = [("numpy", DebertaEngine(m, bundle.weights).forward)]
    flags = cpu_flags()
    for arch, build in m.cpu_kernels.items():
        if not set(build.features) <= flags:
            continue
        engine = NativeDebertaEngine(m, bundle.weights, NativeKernels(dst / build.file, arch))

        def forward(ids: np.ndarray, mask: np.ndarray, types: Any, e: Any = engine) -> np.ndarray:
            b, t = ids.shape
            lengths = [int(n) for n in mask.sum(axis=1)]
            flat = types.reshape(-1).tolist() if types is not None else None
            raw = np.frombuffer(e.run(ids.reshape(-1).tolist(), flat, lengths, t), np.float32)
            return (
                raw.reshape(b, -1) if m.task == "sequence-classification" else raw.reshape(b, t, -1)
            )

        out.append((arch, forward))
    assert len(out) >= 2, "no native kernel build runs on this CPU"
    return out


def _check(
    src: Path, dst: Path, ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None = None
) -> None:
    m = convert(src, dst, cpu_archs=ARCHS)
    want = transformers_reference(src, m.task, ids, mask, types)
    keep = mask.astype(bool)
    for name, forward in _engines(dst):
        got = forward(ids, mask, types)
        got_k, want_k = (
            (got, want) if m.task == "sequence-classification" else (got[keep], want[keep])
        )
        diff = float(np.abs(got_k - want_k).max())
        assert diff <= TOLERANCE, f"{name}: max abs diff {diff:.2e}"
        if m.task != "embeddings":
            np.testing.assert_array_equal(got_k.argmax(-1), want_k.argmax(-1), err_msg=name)


@pytest.mark.parametrize(
    ("buckets", "max_rel", "positions"),
    [(256, -1, 512), (16, -1, 512), (64, 128, 512), (-1, 64, 128), (8, 24, 100)],
)
def test_relative_index_is_transformers_for_every_distance(
    buckets: int, max_rel: int, positions: int
) -> None:
    """The bucket table, computed in float32 as transformers does, equals its own (every i - j)."""
    torch = pytest.importorskip("torch")
    mdv = pytest.importorskip("transformers.models.deberta_v2.modeling_deberta_v2")
    cfg = {"position_buckets": buckets, "max_relative_positions": max_rel,
           "max_position_embeddings": positions}  # fmt: skip
    span = buckets if buckets > 0 else (max_rel if max_rel > 0 else positions)
    layer = torch.zeros(1, positions, 1)
    rel = mdv.build_relative_position(
        layer, layer, bucket_size=buckets, max_position=max_rel if max_rel > 0 else positions
    )[0].numpy()
    want = np.clip(rel + span, 0, 2 * span - 1)
    table = relative_index(cfg, positions)
    i, j = np.arange(positions)[:, None], np.arange(positions)[None, :]
    np.testing.assert_array_equal(table[i - j + positions - 1], want)


@pytest.mark.parametrize("seq", [1, 127, 512])
@pytest.mark.parametrize("task", ["sequence-classification", "token-classification", "embeddings"])
def test_deberta_v3_matches_transformers(tmp_path: Path, task: str, seq: int) -> None:
    src = tmp_path / "src"
    tiny_deberta(src, task, vocab_size=VOCAB)
    _check(src, tmp_path / "bundle", *_batch(seq))


def test_unshared_keys_no_norm_no_buckets_token_types_and_bin(tmp_path: Path) -> None:
    """deberta-v2-style options: separate pos_key/pos_query projections, raw relative
    embeddings, plain clamped distances (span 20 < T), two token types, a .bin checkpoint."""
    src = tmp_path / "src"
    tiny_deberta(
        src, "sequence-classification", vocab_size=VOCAB, share_att_key=False,
        norm_rel_ebd="none", position_buckets=-1, max_relative_positions=20,
        type_vocab_size=2, max_position_embeddings=64, safetensors=False,
    )  # fmt: skip
    assert (src / "pytorch_model.bin").is_file()
    ids, mask = _batch(60, seed=4)
    types = np.zeros_like(ids)
    types[:, 30:] = 1
    _check(src, tmp_path / "bundle", ids, mask * 1, types * mask)


def test_manifest_and_layout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    tiny_deberta(src, "sequence-classification", vocab_size=VOCAB, pooler_hidden_act="tanh")
    m = convert(src, tmp_path / "bundle", cpu_archs=("none",))
    assert (m.architecture, m.config.relative_span, m.config.pooler_act) == (
        "deberta-v2",
        16,
        "tanh",
    )
    w = Bundle.open(tmp_path / "bundle").weights
    assert "embed.position" not in w and w["rel.index"].dtype == np.int32
    assert w["layer.0.attn.pos_q"].shape == (32, 32)
    ids, mask = _batch(40)
    got = DebertaEngine(m, w).forward(ids, mask)
    want = transformers_reference(src, m.task, ids, mask, None)
    assert float(np.abs(got - want).max()) <= TOLERANCE  # the tanh pooler
    from zerostart.pipeline import Pipeline  # --cpu-arch none: the worker runs the reference

    pipe = Pipeline.load(tmp_path / "bundle")
    assert isinstance(getattr(pipe.engine, "engine", None), DebertaEngine)
    lengths = [int(n) for n in mask.sum(axis=1)]
    ones = [1] * ids.size  # a pair's type ids: ignored, the model has no token types
    served = np.frombuffer(pipe.engine.run(ids.reshape(-1).tolist(), ones, lengths, 40), np.float32)
    assert float(np.abs(served.reshape(want.shape) - want).max()) <= TOLERANCE


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "deberta"}, "DeBERTa v1"),
        ({"position_biased_input": True}, "position_biased_input"),
        ({"conv_kernel_size": 3}, "convolution"),
        ({"pos_att_type": ["c2p"]}, "pos_att_type"),
        ({"relative_attention": False}, "without relative_attention"),
        ({"embedding_size": 16}, "embedding_size"),
        ({"pooler_hidden_act": "swish"}, "pooler_hidden_act"),
        ({"pooler_hidden_size": 16}, "pooler_hidden_size"),
        ({"attention_head_size": 4}, "attention_head_size"),
        ({"norm_rel_ebd": "layer_norm|scale"}, "norm_rel_ebd"),
        ({"position_buckets": 256, "max_relative_positions": 100}, "max_relative_positions"),
    ],
)
def test_variants_we_cannot_serve_are_refused_naming_what_works(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    src = tmp_path / "src"
    tiny_deberta(src, "sequence-classification", vocab_size=VOCAB)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ConvertError, match=message) as err:
        convert(src, tmp_path / "bundle", cpu_archs=("none",))
    assert "DeBERTa-v2/v3" in str(err.value.hint)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"device": "cuda"}, "CPU engine only"), ({"precision": "bfloat16"}, "float32 or int8")],
)
def test_gpu_and_bf16_are_refused(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    src = tmp_path / "src"
    tiny_deberta(src, "embeddings", vocab_size=VOCAB)
    extra = {"cpu_archs": ("x86-64-v4+avx512bf16",)} if "precision" in kwargs else {}
    with pytest.raises(ConvertError, match=message):
        convert(src, tmp_path / "bundle", **kwargs, **extra)


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification", "embeddings"])
def test_int8_bundle_tracks_float32(tmp_path: Path, task: str) -> None:
    # measured on this tiny model: logits within 0.4 % (sequence) and 0.24 % (tokens)
    from zerostart.bundle.layout import COLSUM_SUFFIX, SCALE_SUFFIX

    src = tmp_path / "src"
    tiny_deberta(src, task, vocab_size=VOCAB, hidden_size=64, intermediate_size=150)
    convert(src, tmp_path / "f32", cpu_archs=("x86-64-v3",))
    q8 = convert(src, tmp_path / "q8", precision="int8")
    if not any(set(b.features) <= cpu_flags() for b in q8.cpu_kernels.values()):
        pytest.skip("this CPU has neither AVX-512 VNNI nor AVX2: no int8 products")
    bundle = Bundle.open(tmp_path / "q8", verify="full")
    # The four matrices of each layer are packed int8 with their scales and column sums;
    # the relative tables stay float32.
    w = bundle.weights
    for i in range(2):
        for m in ("attn.qkv", "attn.out", "ffn.up", "ffn.down"):
            name = f"layer.{i}.{m}.weight"
            assert w[name].dtype == np.int8 and w[name].ndim == 5
            assert w[name + SCALE_SUFFIX].dtype == np.float32
            assert w[name + COLSUM_SUFFIX].dtype == np.int32
        assert w[f"layer.{i}.attn.pos_q"].dtype == np.float32
    ids, mask = _batch(127, seed=3)
    assert_int8_tracks_float32(
        NativeDebertaEngine.from_bundle(Bundle.open(tmp_path / "f32")),
        NativeDebertaEngine.from_bundle(bundle),
        task,
        ids,
        mask,
    )


@pytest.fixture(scope="module")
def v3_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    folder = tmp_path_factory.mktemp("deberta-tokenizer")
    return folder, deberta_tokenizer(folder)


def test_deberta_v3_tokenizer_layout_matches_tokenizers(v3_tokenizer: tuple[Path, int]) -> None:
    """transformers' DebertaV2Tokenizer layout (Sequence[Metaspace], [CLS] A [SEP] B [SEP],
    type ids 0/1) compiled into tokenizer.bin: ids, types and offsets as `tokenizers`."""
    tokenizers = pytest.importorskip("tokenizers")
    from deberta_models import _corpus
    from zerostart.tokenize import Tokenizer
    from zerostart.tokenize.compile import compile_tokenizer_json

    folder, _ = v3_tokenizer
    tj = folder / "tokenizer.json"
    assert json.loads(tj.read_text())["pre_tokenizer"]["type"] == "Sequence"
    settings = compile_tokenizer_json(tj, folder, special_tokens={"unk_token": "[UNK]"})
    ours = Tokenizer.from_bundle(folder, settings.spec)
    ref = tokenizers.Tokenizer.from_file(str(tj))
    texts = _corpus()
    pairs = list(zip(texts, texts[1:] + texts[:1], strict=True))
    for item in [*texts, *pairs]:
        got = ours.encode_batch([item])[0]
        want = ref.encode(*item) if isinstance(item, tuple) else ref.encode(item)
        assert (got.ids, got.type_ids, got.offsets) == (want.ids, want.type_ids, want.offsets), item


def test_split_by_punct_tokenizer_is_refused(
    v3_tokenizer: tuple[Path, int], tmp_path: Path
) -> None:
    from zerostart.errors import TokenizerError
    from zerostart.tokenize.compile import compile_tokenizer_json

    data = json.loads((v3_tokenizer[0] / "tokenizer.json").read_text())
    data["pre_tokenizer"]["pretokenizers"].insert(
        0, {"type": "Punctuation", "behavior": "Isolated"}
    )
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match=r"Sequence of pre-tokenizers \['Punctuation'"):
        compile_tokenizer_json(tmp_path / "tokenizer.json", tmp_path, special_tokens={})


def test_pairs_from_text_match_transformers(v3_tokenizer: tuple[Path, int], tmp_path: Path) -> None:
    """An NLI cross-encoder and a one-label reranker from raw text pairs, through the
    Pipeline (tokenizer.bin + the native engine): the scores of transformers on the ids of
    `tokenizers` (the pair's type ids 1 are ignored: DeBERTa-v3 has no token types)."""
    torch = pytest.importorskip("torch")
    tokenizers = pytest.importorskip("tokenizers")
    from zerostart.pipeline import Pipeline

    folder, vocab = v3_tokenizer
    texts = [("A man is playing a guitar.", "Someone makes music."),
             ("Paris is the capital of France.", "Berlin is in Germany; naïve café — 東京"),
             ("x", "y")]  # fmt: skip
    ref = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    ref.enable_padding(pad_id=0, pad_token="[PAD]")
    encs = ref.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encs])
    mask = torch.tensor([e.attention_mask for e in encs])
    assert any(1 in e.type_ids for e in encs)
    for labels in (3, 1):
        src = tmp_path / f"src{labels}"
        model = tiny_deberta(src, "sequence-classification", vocab_size=vocab, labels=labels)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (src / name).write_bytes((folder / name).read_bytes())
        convert(src, tmp_path / f"bundle{labels}", cpu_archs=("x86-64",))
        pipe = Pipeline.load(tmp_path / f"bundle{labels}", verify="full")
        assert type(pipe.engine).__name__ == "NativeDebertaEngine"
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=mask).logits.numpy()
        job = pipe.prepare("predict", {"inputs": [list(p) for p in texts], "raw_scores": True})
        rows: Any = job.finish(pipe.execute(job.encodings))
        for row, logits in zip(rows, want, strict=True):
            got = {r["label"]: r["score"] for r in row}
            ours = np.array([got[f"L{i}"] for i in range(labels)])
            assert float(np.abs(ours - logits).max()) <= TOLERANCE
        if labels == 1:
            job = pipe.prepare("rerank", {"query": texts[0][0], "texts": [b for _, b in texts],
                                          "raw_scores": True})  # fmt: skip
            ranked: Any = job.finish(pipe.execute(job.encodings))
            q = ref.encode_batch([(texts[0][0], b) for _, b in texts])
            with torch.no_grad():
                scores = model(
                    input_ids=torch.tensor([e.ids for e in q]),
                    attention_mask=torch.tensor([e.attention_mask for e in q]),
                ).logits.numpy()[:, 0]
            for r in ranked:
                assert abs(r["score"] - scores[r["index"]]) <= TOLERANCE


NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
NER_TEXTS = [
    "Angela Merkel visited Paris and Zürich last week.",
    "unaffable preprocessing by Dr. Smith-Jones in São Paulo",
    "東京 and Köln, naïve café: e-mail first.last@example.com",
    "x",
]


@pytest.fixture(scope="module")
def ner(v3_tokenizer: tuple[Path, int], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(our Pipeline, the model folder) of a DeBERTa-v3 tagger with the trained tokenizer."""
    from zerostart.pipeline import Pipeline

    folder, vocab = v3_tokenizer
    base = tmp_path_factory.mktemp("deberta-ner")
    src = base / "src"
    tiny_deberta(
        src, "token-classification", vocab_size=vocab, labels=len(NER_LABELS),
        id2label=dict(enumerate(NER_LABELS)), label2id={v: k for k, v in enumerate(NER_LABELS)},
    )  # fmt: skip
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes((folder / name).read_bytes())
    convert(src, base / "bundle", cpu_archs=("x86-64",))
    return Pipeline.load(base / "bundle", verify="full"), src


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_matches_the_pipeline(ner: Any, strategy: str) -> None:
    """/tokens through our Pipeline (Unigram tokens, native engine, NER head) against
    transformers' token-classification pipeline with the same folder: labels, words and
    spans identical, scores within 1e-4 (an unknown character, "ã", is [UNK] by id)."""
    transformers = pytest.importorskip("transformers")
    ours, src = ner
    ref = transformers.pipeline(
        "token-classification", model=str(src), aggregation_strategy=strategy, device="cpu"
    )
    job = ours.prepare("tokens", {"inputs": NER_TEXTS, "aggregation_strategy": strategy})
    got: Any = job.finish(ours.execute(job.encodings))
    found = 0
    for text, g, w in zip(NER_TEXTS, got, ref(NER_TEXTS), strict=True):
        assert len(g) == len(w), (text, g, w)
        for a, b in zip(g, w, strict=True):
            key = "entity_group" if "entity_group" in b else "entity"
            assert (a[key], a["word"], a["start"], a["end"]) == (
                b[key], b["word"], b["start"], b["end"],
            ), (text, a, b)  # fmt: skip
            assert abs(a["score"] - float(b["score"])) <= TOLERANCE, (text, a, b)
            found += 1
    assert found >= 5, "the random model should tag something"


def test_unigram_scores_are_read_as_tokenizers_reads_them() -> None:
    """serde_json's default float parse (tokenizers) is not correctly rounded; ours follows it.

    Property: for random score spellings (15-21 significant digits, exponents), the value
    `tokenizers` holds (written back by its own serializer, shortest round-trip) equals
    ``serde_float``'s. Then the tie it decides: with ``-1.8162320129329022`` read one ulp
    apart, Viterbi segments "▁!!!???" differently (found by the DeBERTa-v3 tokenizer test).
    """
    tokenizers = pytest.importorskip("tokenizers")
    import random

    from zerostart.tokenize import Tokenizer
    from zerostart.tokenize.compile import compile_tokenizer_json

    rng = random.Random(5)
    spellings = []
    for _ in range(3000):
        n = rng.randint(15, 21)
        digits = str(rng.randrange(10 ** (n - 1), 10**n))
        point = rng.randint(1, 3)
        text = f"-{digits[:point]}.{digits[point:]}"
        if rng.random() < 0.2:
            text += f"e-{rng.randint(1, 30)}"
        spellings.append(text)
    pieces = [f"p{i}" for i in range(len(spellings))]
    body = ",".join(f'["{p}", {s}]' for p, s in zip(pieces, spellings, strict=True))
    raw = (
        '{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,'
        ' "post_processor": null, "decoder": null, "model": {"type": "Unigram", "unk_id": 0,'
        f' "vocab": [["<unk>", 0.0], {body}], "byte_fallback": false}}}}'
    )
    held = json.loads(tokenizers.Tokenizer.from_str(raw).to_str())["model"]["vocab"][1:]
    from zerostart.tokenize._serde_float import serde_float

    differs = 0
    for text, (_, value) in zip(spellings, held, strict=True):
        assert serde_float(text) == value, text
        differs += float(text) != value
    assert differs > 0, "the sample should hold spellings Python's json reads differently"

    vocab = '["[UNK]", 0.0], ["▁", -1.8162320129329022], ["!", -6.431940394476896], ' \
        '["!!", -7.3434468631380705], ["?", -6.606273340301536], ["??", -7.342805788086873]'  # fmt: skip
    tie = raw.replace(f'["<unk>", 0.0], {body}', vocab).replace(
        '"pre_tokenizer": null',
        '"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}',
    )
    folder = Path(tempfile.mkdtemp())
    (folder / "tokenizer.json").write_text(tie, encoding="utf-8")
    settings = compile_tokenizer_json(folder / "tokenizer.json", folder, special_tokens={})
    ours = Tokenizer.from_bundle(folder, settings.spec).encode_batch(["!!!???"])[0]
    want = tokenizers.Tokenizer.from_str(tie).encode("!!!???")
    assert ours.tokens == want.tokens == ["▁", "!", "!!", "??", "?"]


def test_a_bundle_without_relative_tables_or_kernels_is_refused(tmp_path: Path) -> None:
    """The manifest needs a relative span; the serving engine needs the DeBERTa kernels."""
    from zerostart.bundle.manifest import MANIFEST_NAME, Manifest
    from zerostart.errors import BundleError, EngineError

    src = tmp_path / "src"
    tiny_deberta(src, "embeddings", vocab_size=VOCAB)
    m = convert(src, tmp_path / "bundle", cpu_archs=("x86-64",))
    data = json.loads((tmp_path / "bundle" / MANIFEST_NAME).read_text())
    data["config"]["relative_span"] = 0
    with pytest.raises(BundleError, match="relative_span"):
        Manifest.from_dict(data)
    bundle = Bundle.open(tmp_path / "bundle")
    kernels = NativeKernels(tmp_path / "bundle" / m.cpu_kernels["x86-64"].file, "x86-64")
    kernels.disentangled_attention = None  # a build from before zs_deberta.c
    with pytest.raises(EngineError, match="no DeBERTa kernels"):
        NativeDebertaEngine(m, bundle.weights, kernels)
