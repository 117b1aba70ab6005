"""weights.py: aligned safetensors writing, zero-copy mapping, and refusal of bad files."""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np
import pytest

from zerostart.bundle.weights import (
    ALIGN_BYTES,
    PAD_PREFIX,
    map_safetensors,
    map_weights,
    write_weights,
)
from zerostart.errors import BundleError, ConvertError


def _sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "odd": rng.standard_normal(5).astype(np.float32),  # 20 bytes: forces padding after it
        "half": rng.standard_normal((3, 7)).astype(np.float16),  # 42 bytes
        "empty": np.zeros((0, 4), np.float32),
        "matrix": rng.standard_normal((33, 17)).astype(np.float32),
        "transposed": np.asfortranarray(rng.standard_normal((6, 10)).astype(np.float32)),
    }


def _header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    return n, json.loads(raw[8 : 8 + n])


@pytest.fixture
def written(tmp_path: Path) -> Path:
    path = tmp_path / "w.safetensors"
    write_weights(path, _sample(), {"purpose": "test"})
    return path


def test_round_trip_values_order_and_metadata(written: Path) -> None:
    w = map_weights(written)
    sample = _sample()
    assert list(w) == list(sample)  # the caller's order, pads hidden
    for name, arr in sample.items():
        np.testing.assert_array_equal(w[name], arr)
        assert w[name].dtype == arr.dtype and w[name].shape == arr.shape
    assert w.metadata == {"purpose": "test"}


def test_every_tensor_and_the_data_section_are_64_byte_aligned(written: Path) -> None:
    n, header = _header(written)
    assert (8 + n) % ALIGN_BYTES == 0
    header.pop("__metadata__")
    for name, info in header.items():
        if not name.startswith(PAD_PREFIX):
            assert info["data_offsets"][0] % ALIGN_BYTES == 0, name
    assert any(name.startswith(PAD_PREFIX) for name in header)  # the sample needs padding


def test_same_inputs_give_identical_bytes(tmp_path: Path) -> None:
    write_weights(tmp_path / "a", _sample(), {"k": "v"})
    write_weights(tmp_path / "b", _sample(), {"k": "v"})
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_safetensors_library_reads_our_file(written: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    loaded = st.load_file(str(written))
    for name, arr in _sample().items():
        np.testing.assert_array_equal(loaded[name], arr)
    with safe_open(str(written), framework="np") as f:
        assert f.metadata() == {"purpose": "test"}


def test_mapped_arrays_are_read_only_views_of_one_mmap(written: Path) -> None:
    w = map_weights(written)
    assert isinstance(w.buffer, mmap.mmap)
    whole = np.frombuffer(w.buffer, dtype=np.uint8)
    for name in ("odd", "half", "matrix"):
        arr = w[name]
        assert not arr.flags.owndata
        assert not arr.flags.writeable
        assert np.shares_memory(arr, whole)
        assert arr.flags.c_contiguous and arr.flags.aligned
    with pytest.raises(ValueError):
        w["matrix"][0, 0] = 1.0


def test_writer_refuses_integer_tensors_and_reserved_names(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="float32/float16"):
        write_weights(tmp_path / "x", {"ids": np.arange(3)}, {})
    with pytest.raises(BundleError, match="reserved"):
        write_weights(tmp_path / "x", {PAD_PREFIX + "0": np.zeros(3, np.float32)}, {})


def _rewrite_header(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _data(path: Path) -> bytes:
    n, _ = _header(path)
    return path.read_bytes()[8 + n :]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:5]), "too short"),
        (lambda p: p.write_bytes(struct.pack("<Q", 10**6) + b"{}"), "header length"),
        (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{no}"), "not valid JSON"),
        (lambda p: p.write_bytes(struct.pack("<Q", 2) + b"[]"), "not a JSON object"),
    ],
)
def test_corrupt_files_raise_bundle_error_naming_the_file(
    written: Path, mutate, message: str
) -> None:
    mutate(written)
    with pytest.raises(BundleError, match=message) as info:
        map_weights(written)
    assert info.value.path == str(written)


def test_header_inconsistencies_are_refused(written: Path) -> None:
    _, header = _header(written)
    data = _data(written)

    def expect(h: dict, message: str) -> None:
        _rewrite_header(written, h, data)
        with pytest.raises(BundleError, match=message):
            map_weights(written)

    bad = json.loads(json.dumps(header))
    bad["matrix"]["shape"] = [33, 18]
    expect(bad, "'matrix' has shape")
    bad = json.loads(json.dumps(header))
    bad["matrix"]["dtype"] = "I64"
    expect(bad, "dtype 'I64'")
    bad = json.loads(json.dumps(header))
    start = bad["odd"]["data_offsets"][0]
    bad["half"]["data_offsets"] = [start, start + 42]  # 'half' moved on top of 'odd'
    expect(bad, "overlap")
    bad = json.loads(json.dumps(header))
    bad["matrix"]["data_offsets"] = [10**9, 10**9 + 33 * 17 * 4]
    expect(bad, "truncated")
    bad = json.loads(json.dumps(header))
    bad["__metadata__"] = {"k": 1}
    expect(bad, "__metadata__")


def test_map_safetensors_uses_the_callers_error_type_and_allows_other_dtypes(
    tmp_path: Path,
) -> None:
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "hf.safetensors"
    st.save_file({"ids": np.arange(6, dtype=np.int64).reshape(2, 3)}, str(path))
    w = map_safetensors(path, error=ConvertError)
    np.testing.assert_array_equal(w["ids"], np.arange(6).reshape(2, 3))
    with pytest.raises(BundleError, match="dtype 'I64'"):
        map_weights(path)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ConvertError):
        map_safetensors(path, error=ConvertError)
