"""The tokenizer's native inner loops (``tokenizer.so`` beside ``tokenizer.bin``), through ctypes.

``zerostart convert`` compiles ``kernels/cpu/zs_tok.c`` into the bundle
(``zerostart.kernels.tok_build``); the worker loads it here and the models call
it on the mapped tables (``_unigram.py``). The library is optional: a bundle
without it (no compiler at convert), a library this zerostart does not speak
(ABI version), one this machine cannot load (another instruction set), or
``ZEROSTART_TOKENIZER_NATIVE=0`` all give the pure-Python code, which follows
the same rules and gives the same answers, slower. Each of those but the
first is logged once as a warning, naming the file.

Runtime module: standard library only (ctypes).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable
from typing import Any

from zerostart.tokenize._compiled import NATIVE_LIB_NAME

ABI_VERSION = 3  # must match ZS_TOK_ABI_VERSION in kernels/cpu/zs_tok.c
ENV = "ZEROSTART_TOKENIZER_NATIVE"  # "0": use the pure-Python code even if the library is there

# Return codes of zs_unigram_segment (zs_tok.c).
NO_UNK = -1
NEEDS_PYTHON = -2
NO_ROOM = -3
NO_MEMORY = -4

log = logging.getLogger("zerostart.tokenize")

_P = ctypes.c_void_p
_I = ctypes.c_int64


class UnigramTables(ctypes.Structure):
    """``zs_unigram`` of zs_tok.c: addresses of the mapped sections and the model's constants."""

    _fields_ = [
        ("first", _P),
        ("labels", _P),
        ("value", _P),
        ("scores", _P),
        ("nodes", _I),
        ("vocab", _I),
        ("unk_id", _I),
        ("byte_fallback", _I),
        ("unk_score", ctypes.c_double),
        ("root", _P),  # int32 x 256, filled by zs_unigram_check
    ]


class BpeTables(ctypes.Structure):
    """``zs_bpe`` of zs_tok.c: addresses of the mapped BPE sections, the class ranges, sizes."""

    _fields_ = [
        ("pieces", _P),
        ("offsets", _P),
        ("merge_starts", _P),
        ("merge_rights", _P),
        ("merge_values", _P),
        ("byte_ids", _P),
        ("ranges", _P),
        ("vocab", _I),
        ("merges", _I),
        ("pieces_len", _I),
        ("n_letter", _I),
        ("n_number", _I),
        ("n_space", _I),
    ]


class NativeLib:
    """The functions of a loaded ``tokenizer.so``, with their C signatures."""

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.path = path
        self.unigram_check = _signed(lib.zs_unigram_check, _P)  # a UnigramTables' address
        self.unigram_segment = _signed(
            lib.zs_unigram_segment,
            _P,  # tables: a UnigramTables' address
            *_UNIGRAM_TEXT,
            _P,  # out: six int32 arrays of cap entries
            _I,  # cap
            _P,  # out: int64 x 2, word count and joined length
            _P,  # out: the tokens' UTF-8 joined by NUL bytes (n + cap bytes), or None
        )
        self.bpe_check = _signed(lib.zs_bpe_check, _P)  # a BpeTables' address
        # The same library through PyDLL (the GIL held during the call, a Python exception
        # raised after it), for the functions that append to Python lists themselves; None
        # where the interpreter does not export the C API functions they use.
        self.unigram_encode_py: Callable[..., int] | None = None
        self.bpe_encode_py: Callable[..., int] | None = None
        if _signed(lib.zs_tok_python_api)():
            py = ctypes.PyDLL(path)
            self.unigram_encode_py = _signed(
                py.zs_unigram_encode_py,
                _P,  # tables: a UnigramTables' address
                *_UNIGRAM_TEXT,
                _I,  # the first word's index
                *_LISTS,
            )
            self.bpe_encode_py = _signed(
                py.zs_bpe_encode_py,
                _P,  # tables: a BpeTables' address
                ctypes.c_char_p,  # text (UTF-8), after the normaliser
                _I,  # its length in bytes
                _P,  # int32 alignment to the original text, or None for the identity
                _I,  # offset base
                _I,  # the first word's index
                _I,  # add_prefix_space
                _I,  # use_regex
                *_LISTS,
            )


# The Unigram calls' text arguments, in order.
_UNIGRAM_TEXT = (
    ctypes.c_char_p,  # text (UTF-8)
    _I,  # its length in bytes
    ctypes.c_char_p,  # word separator (UTF-8)
    _I,  # its length (0: one word)
    _P,  # int32 alignment, or None for the identity
    _I,  # 1 if a character was prepended to the aligned text
    _I,  # offset base
)
# The lists an *_encode_py call appends to: ids, tokens, offsets, word ids.
_LISTS = (ctypes.py_object,) * 4


def _signed(fn: Any, *argtypes: Any) -> Any:
    """``fn`` with its C argument types and an int64 result."""
    fn.argtypes = list(argtypes)
    fn.restype = _I
    return fn


def load(folder: str | os.PathLike[str]) -> NativeLib | None:
    """``folder/tokenizer.so`` if it is there, loads and speaks ``ABI_VERSION``; else None."""
    path = os.path.join(folder, NATIVE_LIB_NAME)
    if os.environ.get(ENV, "1") == "0" or not os.path.isfile(path):
        return None
    try:
        lib = ctypes.CDLL(os.path.abspath(path))
        version = lib.zs_tok_abi_version
        version.restype = _I
        found = int(version())
    except (OSError, AttributeError) as exc:
        log.warning("%s cannot be loaded (%s): the tokenizer runs in Python", path, exc)
        return None
    if found != ABI_VERSION:
        log.warning(
            "%s has ABI %d, this zerostart needs %d: the tokenizer runs in Python "
            "(re-run zerostart convert)",
            path,
            found,
            ABI_VERSION,
        )
        return None
    return NativeLib(lib, path)
