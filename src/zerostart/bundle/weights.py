"""Safetensors files, written aligned and read as zero-copy memory maps.

Why our own reader and writer rather than the ``safetensors`` package: the
worker's cold-start path imports only the standard library (numpy stays off it:
docs/cpu.md), and mapping a file is a few dozen lines. The format (https://huggingface.co/docs/safetensors)::

    u64 little-endian N | N bytes of JSON header | data

The header maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
with offsets relative to the start of the data section, plus an optional
``"__metadata__"`` object of string to string.

What we add on the write side: the header is padded with spaces so the data
starts on a 64-byte boundary, and every tensor starts on a 64-byte boundary too
(cache-line and SIMD friendly, and what a GPU copy wants). The safetensors
library insists the tensors tile the data section with no gaps, so the gaps
are filled by small ``uint8`` tensors named ``__pad__.<n>``; readers of
this module never see them.

The worker's native engine takes each tensor's address (:meth:`Weights.address`)
and hands it to the kernels; numpy views (``weights[name]``) are made on first
access, for the reference engine, convert and the tests, which import numpy anyway.
The file is mapped copy-on-write (``ACCESS_COPY``): pages are shared with the
page cache and every other process mapping the file until someone writes to one
(nothing does), and a writable mapping is what ctypes needs to take an address.

Runtime module: standard library only (numpy is imported by the numpy views).
"""

from __future__ import annotations

import ctypes
import json
import mmap
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from zerostart.errors import BundleError

if TYPE_CHECKING:
    import numpy as np

ALIGN_BYTES = 64  # a cache line, and a multiple of every SIMD width numpy/BLAS use
PAD_PREFIX = "__pad__."
HEADER_MAX_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
_LEN_BYTES = 8
MADV_POPULATE_READ = 22  # linux/mman.h (5.14+); Python's mmap module has no name for it

# safetensors dtype -> numpy dtype string (little-endian). BF16 has no numpy dtype: it
# is mapped as raw uint16 and widened by whoever needs it (convert does).
NUMPY_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
DTYPE_BYTES = {name: int(dt.lstrip("<")[1:] or 1) for name, dt in NUMPY_DTYPES.items()}
# What a bundle may hold: the engines compute in float32/float16; reduced-precision CPU
# bundles add packed int8 / bf16 matrices and their int32 column sums (bundle.layout).
BUNDLE_DTYPES = ("F32", "F16", "I8", "I32", "BF16")
# uint16 is written as BF16: bf16 bit patterns are the only 16-bit integers a bundle holds.
_WRITE_DTYPES = {"<f4": "F32", "<f2": "F16", "|i1": "I8", "<i4": "I32", "<u2": "BF16"}


class TensorInfo(NamedTuple):
    """Where one tensor lives: safetensors dtype ("F32"...), shape, byte offset in the file."""

    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class Weights(Mapping[str, "np.ndarray"]):
    """Read-only tensors of one safetensors file, all in one memory map.

    Nothing is copied: pages are read from disk (or the page cache) when a
    tensor is first touched, which is what makes a cold start cheap.
    ``weights[name]`` is a numpy view (numpy imported on first use);
    ``address(name)`` the tensor's address for native code, with no numpy.
    """

    def __init__(
        self,
        path: Path,
        buffer: mmap.mmap | None,
        tensors: dict[str, TensorInfo],
        metadata: dict[str, str],
        header_size: int,
    ) -> None:
        self.path = path
        self.buffer = buffer  # kept alive for as long as the views are
        self.info = tensors  # name -> TensorInfo, in file order
        self.dtypes = {n: t.dtype for n, t in tensors.items()}  # "F32", "BF16", ...
        self.metadata = metadata
        self.header_size = header_size  # 8 + JSON header bytes (incl. padding)
        self._views: dict[str, np.ndarray] = {}
        self._base: int | None = None

    def address(self, name: str) -> int:
        """The address of tensor ``name``'s first byte (valid while this object lives).

        Raises KeyError for an unknown name.
        """
        info = self.info[name]
        if self._base is None:
            if self.buffer is None or len(self.buffer) == 0:
                raise BundleError(self.path, "the weights file holds no tensor data")
            self._base = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))
        return self._base + info.offset

    def populate(self, first: str) -> int:
        """Map the pages of tensor ``first`` and of every tensor after it in the file now.

        ``madvise(MADV_POPULATE_READ)`` (Linux 5.14+) fills the page tables from the page
        cache (reading from disk what is not there) without running code over the data:
        what a first forward pass would fault in page by page. Older kernels get
        ``MADV_WILLNEED`` (read-ahead only). Returns the bytes covered; 0 without a map.
        """
        if self.buffer is None or len(self.buffer) == 0:
            return 0
        start = self.info[first].offset // mmap.PAGESIZE * mmap.PAGESIZE
        length = len(self.buffer) - start
        try:
            self.buffer.madvise(MADV_POPULATE_READ, start, length)
        except OSError:  # EINVAL: a kernel before 5.14
            self.buffer.madvise(mmap.MADV_WILLNEED, start, length)
        return length

    def __getitem__(self, name: str) -> np.ndarray:
        view = self._views.get(name)
        if view is None:
            import numpy as np

            info = self.info[name]
            dtype = np.dtype(NUMPY_DTYPES[info.dtype])
            if info.nbytes:
                view = np.frombuffer(
                    self.buffer,  # type: ignore[arg-type]
                    dtype=dtype,
                    count=info.nbytes // dtype.itemsize,
                    offset=info.offset,
                ).reshape(info.shape)
            else:
                view = np.empty(info.shape, dtype=dtype)
            view.flags.writeable = False  # a copy-on-write map: never write the weights
            self._views[name] = view
        return view

    def __iter__(self) -> Iterator[str]:
        return iter(self.info)

    def __len__(self) -> int:
        return len(self.info)

    def __contains__(self, name: object) -> bool:
        return name in self.info

    def __repr__(self) -> str:
        return f"Weights({str(self.path)!r}, {len(self)} tensors)"


def write_weights(
    path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> None:
    """Write ``tensors`` (float32/float16; int8, int32, bf16 bits as uint16) as an aligned safetensors file.

    Tensors are written in the mapping's iteration order, which the caller
    chooses (convert uses the order the engine reads them in), so the same
    inputs always give the same bytes.
    """
    import numpy as np

    header: dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    chunks: list[memoryview | bytes] = []
    offset = 0
    pads = 0
    for name, array in tensors.items():
        if name.startswith(PAD_PREFIX) or name == "__metadata__":
            raise BundleError(path, f"tensor name {name!r} is reserved")
        arr = np.ascontiguousarray(array)
        if arr.dtype.newbyteorder("<").str not in _WRITE_DTYPES:
            raise BundleError(
                path,
                f"tensor {name!r} has dtype {arr.dtype}; bundles hold float32/float16 "
                "(and int8/int32/bf16 in reduced-precision CPU bundles)",
            )
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        gap = -offset % ALIGN_BYTES
        if gap:
            header[f"{PAD_PREFIX}{pads}"] = {
                "dtype": "U8",
                "shape": [gap],
                "data_offsets": [offset, offset + gap],
            }
            chunks.append(bytes(gap))
            pads += 1
            offset += gap
        header[name] = {
            "dtype": _WRITE_DTYPES[arr.dtype.str],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        chunks.append(arr.reshape(-1).view(np.uint8).data)
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(_LEN_BYTES + len(raw)) % ALIGN_BYTES)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for chunk in chunks:
            f.write(chunk)


def map_weights(path: str | Path) -> Weights:
    """Map a bundle's weights file: the BUNDLE_DTYPES only, validated, zero-copy."""
    return map_safetensors(path, allowed_dtypes=BUNDLE_DTYPES)


def map_safetensors(
    path: str | Path,
    *,
    allowed_dtypes: tuple[str, ...] = tuple(NUMPY_DTYPES),
    error: type[BundleError] = BundleError,
) -> Weights:
    """Map any safetensors file read-only; every problem is ``error(path, problem)``.

    Checked before any tensor is exposed: the header length, that the header is
    a JSON object, each entry's dtype, shape and byte range (inside the file and
    consistent with the shape), and that no two tensors overlap. So a truncated
    or corrupted file fails here, naming itself, and not later as a crash.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < _LEN_BYTES:
                raise error(path, f"file is {size} bytes: too short to be safetensors (truncated?)")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except FileNotFoundError as exc:
        raise error(path, "file not found") from exc
    except OSError as exc:
        raise error(path, f"cannot map file: {exc}") from exc
    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > HEADER_MAX_BYTES or _LEN_BYTES + n > size:
        raise error(
            path,
            f"header length {n} does not fit a {size}-byte file (truncated or not safetensors)",
        )
    try:
        header = json.loads(buf[_LEN_BYTES : _LEN_BYTES + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(path, f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise error(path, "header is not a JSON object")
    start = _LEN_BYTES + n
    data_len = size - start
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise error(path, "__metadata__ must map strings to strings")

    tensors: dict[str, TensorInfo] = {}
    ranges: list[tuple[int, int, str]] = []
    for name, info in header.items():
        dtype, shape, (begin, end) = _check_entry(path, name, info, allowed_dtypes, data_len, error)
        ranges.append((begin, end, name))
        if name.startswith(PAD_PREFIX):
            continue
        tensors[name] = TensorInfo(dtype, shape, start + begin, end - begin)
    reach, reach_name = 0, ""
    for begin, end, name in sorted(ranges):
        if begin < reach and end > begin:
            raise error(
                path, f"tensors {reach_name!r} and {name!r} overlap (data bytes {begin}..{reach})"
            )
        if end > reach:
            reach, reach_name = end, name
    return Weights(path, buf, tensors, metadata, start)


def _check_entry(
    path: Path,
    name: str,
    info: object,
    allowed: tuple[str, ...],
    data_len: int,
    error: type[BundleError],
) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    if not isinstance(info, dict):
        raise error(path, f"header entry for {name!r} is not an object")
    dtype = info.get("dtype")
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    is_pad = name.startswith(PAD_PREFIX) and dtype == "U8"
    if dtype not in NUMPY_DTYPES or (dtype not in allowed and not is_pad):
        raise error(path, f"tensor {name!r} has dtype {dtype!r}; expected one of {list(allowed)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise error(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise error(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if end > data_len:
        raise error(
            path,
            f"tensor {name!r} ends at data byte {end} but the file has only {data_len} data bytes (truncated?)",
        )
    nbytes = DTYPE_BYTES[dtype]
    for d in shape:
        nbytes *= d
    if end - begin != nbytes:
        raise error(
            path,
            f"tensor {name!r} has shape {shape} ({nbytes} bytes of {dtype}) but its byte range holds {end - begin}",
        )
    return dtype, tuple(shape), (begin, end)
