"""Read a PyTorch ``pytorch_model.bin`` into numpy arrays without torch and without risk.

A ``.bin`` is ``torch.save``'s zip archive: ``<prefix>/data.pkl`` (a pickle of
the state dict) plus one raw little-endian blob per storage under
``<prefix>/data/<key>``. Unpickling runs whatever callables the pickle names,
so a plain ``pickle.load`` of an untrusted checkpoint executes arbitrary code.
This unpickler resolves only the handful of globals a state dict needs
(tensor rebuild, ``OrderedDict``, storage types) to our own numpy stand-ins;
anything else is refused before it runs, with the name of the global.

Build-time module (used by ``convert``); never imports torch.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from zerostart.errors import ConvertError

# torch storage class name -> numpy dtype of its elements. BFloat16 is read as
# raw uint16 and widened to float32 by the caller.
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co.: only its dtype matters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class BF16Array(np.ndarray):
    """A uint16 array holding bfloat16 bits, so callers know to widen it."""


def _rebuild_tensor_v2(
    storage: np.ndarray,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> np.ndarray:
    item = storage.itemsize
    numel = 1
    for d in size:
        numel *= d
    if numel:
        last = storage_offset + sum((d - 1) * s for d, s in zip(size, stride, strict=True))
        if storage_offset < 0 or last >= storage.size or any(s < 0 for s in stride):
            raise ValueError(f"tensor view of shape {size} runs outside its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:] if numel else storage[:0],
        shape=size,
        strides=tuple(s * item for s in stride),
        writeable=False,
    )
    out = np.ascontiguousarray(view)
    return out.view(BF16Array) if isinstance(storage, BF16Array) else out


def _rebuild_parameter(
    data: np.ndarray, requires_grad: bool = False, backward_hooks: object = None
) -> np.ndarray:
    return data


# (module, name) -> our stand-in. Nothing outside this table can be unpickled.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._path = path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ConvertError(
                self._path,
                f"refusing to unpickle global {module}.{name}: a weights file holds only tensors",
                hint="convert the checkpoint to model.safetensors, or check where this file came from",
            ) from None

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ConvertError(self._path, f"unexpected persistent id {pid!r:.80}")
        _tag, storage_type, key, _location, _numel = pid
        if not isinstance(storage_type, _StorageType):
            raise ConvertError(self._path, f"unexpected storage type {storage_type!r:.80}")
        key = str(key)
        cached = self._storages.get(key)
        if cached is None:
            member = f"{self._prefix}/data/{key}"
            try:
                raw = self._archive.read(member)
            except KeyError as exc:
                raise ConvertError(self._path, f"archive has no storage {member!r}") from exc
            arr = np.frombuffer(raw, dtype=storage_type.dtype)
            cached = arr.view(BF16Array) if storage_type.name == "BFloat16Storage" else arr
            self._storages[key] = cached
        return cached


def load_torch_bin(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict of a ``torch.save`` zip checkpoint, as numpy arrays.

    bfloat16 tensors come back as ``BF16Array`` (uint16 bits).
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError as exc:
        raise ConvertError(path, "file not found") from exc
    except zipfile.BadZipFile as exc:
        raise ConvertError(
            path,
            "not a zip archive: only torch.save's zip format (torch >= 1.6) is supported",
            hint="re-save it with torch.save(..., _use_new_zipfile_serialization=True) or as safetensors",
        ) from exc
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ConvertError(
                path, "archive has no (single) <prefix>/data.pkl: not a torch checkpoint"
            )
        prefix = pkl[0].split("/", 1)[0]
        order = f"{prefix}/byteorder"
        if order in archive.namelist() and archive.read(order).strip() != b"little":
            raise ConvertError(path, "big-endian checkpoints are not supported")
        try:
            state = _Unpickler(archive.read(pkl[0]), archive, prefix, path).load()
        except ConvertError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, zipfile.BadZipFile) as exc:
            raise ConvertError(path, f"corrupt checkpoint: {exc}") from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()
    ):
        raise ConvertError(path, "checkpoint is not a flat state dict of tensors")
    return dict(state)
