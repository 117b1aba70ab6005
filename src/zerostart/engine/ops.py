"""Numpy kernels for the CPU engine: activations, layer norm, softmax.

Why they look the way they do: numpy runs one ufunc at a time over the whole
array, so a formula of twenty operations on a 25 MB activation streams 500 MB
through memory. Each kernel here therefore works in place and, where it has
many steps, row-block by row-block with small scratch buffers that stay in
the CPU's L2 cache. numpy has no ``erf``; ``gelu_erf`` uses a rational
approximation (the one Eigen and XLA use for float32) accurate to a few float32
ulps, with no ``exp`` (numpy's float32 exp costs ~10x a multiply here).

Runtime module: numpy only.
"""

from __future__ import annotations

import math

import numpy as np

# Elements per block in the blocked kernels: 3 scratch buffers of 32 Ki float32
# (128 KiB each) fit a 512 KiB L2 together with the block itself.
BLOCK_ELEMS = 32 * 1024

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_ERF_CLAMP = 4.0  # |erf(x)| rounds to 1.0 in float32 beyond 3.92

# erf(x) ~= x * P(x^2) / Q(x^2) on [-4, 4]; P has degree 6 in x^2, Q degree 4.
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorised float32 error function (max abs error ~1e-7 against math.erf)."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    flat, res = x.reshape(-1), out.reshape(-1)
    u, x2, p = (np.empty(min(BLOCK_ELEMS, flat.size), np.float32) for _ in range(3))
    for i in range(0, flat.size, BLOCK_ELEMS):
        j = min(flat.size, i + BLOCK_ELEMS)
        n = j - i
        _erf_block(flat[i:j], res[i:j], u[:n], x2[:n], p[:n])
    return out


def _erf_block(
    x: np.ndarray, out: np.ndarray, u: np.ndarray, x2: np.ndarray, p: np.ndarray
) -> None:
    np.clip(x, -_ERF_CLAMP, _ERF_CLAMP, out=u)
    np.multiply(u, u, out=x2)
    np.multiply(x2, _ERF_P[0], out=p)
    for c in _ERF_P[1:-1]:
        p += c
        p *= x2
    p += _ERF_P[-1]
    p *= u
    np.multiply(x2, _ERF_Q[0], out=out)
    for c in _ERF_Q[1:-1]:
        out += c
        out *= x2
    out += _ERF_Q[-1]
    np.divide(p, out, out=out)


def gelu_erf_(x: np.ndarray) -> None:
    """In place: x * 0.5 * (1 + erf(x / sqrt(2))), Hugging Face's "gelu"."""
    flat = x.reshape(-1)
    n_max = min(BLOCK_ELEMS, flat.size)
    u, x2, p, e = (np.empty(n_max, np.float32) for _ in range(4))
    for i in range(0, flat.size, BLOCK_ELEMS):
        j = min(flat.size, i + BLOCK_ELEMS)
        n = j - i
        blk = flat[i:j]
        np.multiply(blk, _SQRT1_2, out=e[:n])
        _erf_block(e[:n], e[:n], u[:n], x2[:n], p[:n])
        e[:n] += 1.0
        e[:n] *= 0.5
        blk *= e[:n]


def gelu_tanh_(x: np.ndarray) -> None:
    """In place: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), "gelu_new" & co."""
    flat = x.reshape(-1)
    n_max = min(BLOCK_ELEMS, flat.size)
    t = np.empty(n_max, np.float32)
    for i in range(0, flat.size, BLOCK_ELEMS):
        j = min(flat.size, i + BLOCK_ELEMS)
        blk, tb = flat[i:j], t[: j - i]
        np.multiply(blk, blk, out=tb)
        tb *= 0.044715
        tb += 1.0
        tb *= blk
        tb *= _SQRT_2_OVER_PI
        np.tanh(tb, out=tb)
        tb += 1.0
        tb *= 0.5
        blk *= tb


def relu_(x: np.ndarray) -> None:
    np.maximum(x, 0.0, out=x)


def layer_norm_(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> None:
    """In place over the last axis of a 2-D C-contiguous array (biased variance, like torch)."""
    mean = x.mean(axis=-1, keepdims=True)
    x -= mean
    var = np.einsum("ij,ij->i", x, x)[:, None]
    var *= 1.0 / x.shape[-1]
    var += eps
    np.sqrt(var, out=var)
    np.reciprocal(var, out=var)
    x *= var
    x *= weight
    x += bias


def softmax_(x: np.ndarray) -> None:
    """In place over the last axis."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    s = x.sum(axis=-1, keepdims=True)
    np.reciprocal(s, out=s)
    x *= s
