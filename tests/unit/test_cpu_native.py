"""The numpy-free serving path's pieces against their numpy references.

``Heads`` (native ``zs_pool_vector`` / ``zs_softmax_rows``, and the plain-Python
fallback a GPU worker uses) against ``zerostart.tasks.pool`` / ``normalize``
(themselves checked against sentence-transformers in test_tasks_parity.py);
``NativeCpuEngine``'s refusals; mapped weights' addresses; warm-up by mapping. The engine's numbers against transformers are in
test_engine_parity.py.
"""

from __future__ import annotations

import ctypes
import math
import shutil
from array import array
from pathlib import Path

import numpy as np
import pytest

from zerostart.bundle.folder import Bundle
from zerostart.engine.cpu_native import NativeCpuEngine
from zerostart.errors import EngineError, InputError
from zerostart.tasks import normalize, pool
from zerostart.tasks.heads import Heads

cpu_build = pytest.importorskip("zerostart.kernels.cpu_build")
if shutil.which(cpu_build.CC) is None:
    pytest.skip(
        f"no C compiler ({cpu_build.CC}): the kernels are built at convert time",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def embed_pipe(embed_bundle: Path) -> Bundle:
    return Bundle.open(embed_bundle)


@pytest.fixture(scope="module")
def engine(embed_pipe: Bundle) -> NativeCpuEngine:
    return NativeCpuEngine.from_bundle(embed_pipe)


def _states(seed: int, tokens: int = 13, hidden: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((tokens, hidden)).astype(np.float32)


def _view(a: np.ndarray) -> memoryview:
    """A float32 buffer shaped like the pipeline's outputs (an array('f') behind it)."""
    buf = array("f", a.reshape(-1).tolist())
    return memoryview(buf).cast("B").cast("f", a.shape)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@pytest.mark.parametrize("mode", ["cls", "mean"])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("dims", [None, 16])
def test_sentence_vector_matches_the_numpy_reference(
    engine: NativeCpuEngine, native: bool, mode: str, norm: bool, dims: int | None
) -> None:
    heads = Heads(engine.kernels if native else None)
    states = _states(1)
    got = np.asarray(heads.sentence_vector(_view(states), mode, normalize=norm, dims=dims))
    want = pool(states[None], np.ones((1, len(states)), np.int64), mode)[:, : dims or 48]
    if norm:  # Matryoshka: cut first, then normalise (sentence-transformers' truncate_dim)
        want = normalize(want)
    assert got.dtype == np.float32 and got.shape == (dims or 48,)
    np.testing.assert_allclose(got, want[0], rtol=0, atol=2e-6)
    if norm:
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_sentence_vector_refuses_nan_and_bad_dims(engine: NativeCpuEngine, native: bool) -> None:
    heads = Heads(engine.kernels if native else None)
    states = _states(2)
    states[5, 7] = np.nan
    with pytest.raises(EngineError, match=r"non-finite hidden state .* input 3"):
        heads.sentence_vector(_view(states), "mean", normalize=True, index=3)
    states[5, 7] = np.inf
    with pytest.raises(EngineError, match="non-finite"):
        heads.sentence_vector(_view(states), "mean", normalize=False)
    # CLS pooling reads row 0 only: a NaN elsewhere does not reach the answer
    vec = heads.sentence_vector(_view(states), "cls", normalize=True)
    assert all(math.isfinite(v) for v in vec.tolist())
    with pytest.raises(InputError, match="dimensions"):
        heads.sentence_vector(_view(states), "mean", normalize=True, dims=49)
    with pytest.raises(InputError, match="pooling mode"):
        heads.sentence_vector(_view(states), "max", normalize=True)


def test_zero_vector_stays_zero_when_normalised(engine: NativeCpuEngine) -> None:
    vec = Heads(engine.kernels).sentence_vector(
        _view(np.zeros((3, 8), np.float32)), "mean", normalize=True
    )
    assert vec.tolist() == [0.0] * 8  # eps floor, as torch: no NaN


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_token_scores_are_the_softmax_of_each_row(engine: NativeCpuEngine, native: bool) -> None:
    logits = _states(3, tokens=9, hidden=35) * 10
    got = np.asarray(Heads(engine.kernels if native else None).token_scores(_view(logits)))
    e = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(axis=1, keepdims=True), rtol=0, atol=1e-6)


def test_engine_refuses_bad_batches(engine: NativeCpuEngine) -> None:
    ok = engine.run([101, 7592, 102], None, [3], 3)
    assert len(ok) == 3 * 384 and all(math.isfinite(v) for v in ok)
    vocab = engine.manifest.config.vocab_size
    with pytest.raises(EngineError, match="input_ids must be in"):
        engine.run([101, vocab, 102], None, [3], 3)
    with pytest.raises(EngineError, match="input_ids must be in"):
        engine.run([101, -1, 102], None, [3], 3)
    with pytest.raises(EngineError, match="exceeds the model's positions"):
        engine.run([0] * 513, None, [513], 513)
    with pytest.raises(EngineError, match="token ids for"):
        engine.run([101, 102], None, [2, 1], 2)
    with pytest.raises(EngineError, match="lengths must be in"):
        engine.run([101, 102, 0, 0], None, [2, 0], 2)
    with pytest.raises(EngineError, match="token_type_ids must be in"):
        engine.run([101, 7592, 102], [0, 0, 9], [3], 3)


def test_padding_never_changes_a_sequence(engine: NativeCpuEngine) -> None:
    alone = engine.run([101, 7592, 2088, 102], None, [4], 4)
    padded = engine.run([101, 7592, 2088, 102, 101, 102, 0, 0], None, [4, 2], 4)
    np.testing.assert_allclose(
        np.frombuffer(padded, np.float32)[: 4 * 384], np.frombuffer(alone, np.float32), atol=1e-5
    )


def test_weights_addresses_are_the_mapped_tensors(embed_pipe: Bundle) -> None:
    w = embed_pipe.weights
    for name in ("embed.word", "layer.0.attn.qkv.weight", "embed.norm.bias"):
        view = w[name]
        assert w.address(name) == view.__array_interface__["data"][0]
        assert not view.flags.writeable  # a copy-on-write map: nobody writes the weights
        first = ctypes.c_float.from_address(w.address(name)).value
        assert first == float(view.reshape(-1)[0])


def _mapped_rss_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isdigit() or (line[:1] in "abcdef" and "-" in line.split()[0]):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_prefault_maps_the_layers_without_a_forward(embed_bundle: Path) -> None:
    """Warm-up by mapping: the layer and head pages are resident after ``prefault``."""
    bundle = Bundle.open(embed_bundle)  # a fresh map: nothing resident yet
    engine = NativeCpuEngine.from_bundle(bundle)
    path = bundle.weights.path.resolve()
    before = _mapped_rss_kib(path)
    mapped = engine.prefault()
    first = bundle.weights.info["layer.0.attn.qkv.weight"].offset
    assert mapped >= len(bundle.weights.buffer or b"") - first  # layers + head, to the end
    assert _mapped_rss_kib(path) - before >= 0.9 * mapped / 1024
