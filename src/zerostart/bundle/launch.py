"""The kernels manifest and the launch rules: which compiled kernel runs a shape, on what grid.

``zerostart convert --device cuda`` compiles the Triton kernels ahead of time
(``zerostart.kernels.aot``) and writes ``kernels/manifest.json`` into the
bundle; this module is the runtime half of that contract. It is pure Python
(no GPU, no numpy) so every rule here is unit-tested on CI:

* the manifest schema (``KernelManifest``, ``KernelVariant``), with the
  argument signature of every kernel so arguments are packed by name, not by
  position guessed at run time;
* the grid of a launch, a formula over problem sizes stored as text in the
  manifest (``"cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)"``) and evaluated by a tiny
  arithmetic interpreter (no ``eval``): names, integers, ``+ - * //``, ``cdiv``,
  ``max`` and ``min``;
* variant selection: the GEMM block configuration per shape and the other
  kernels by exact parameters;
* shape buckets: a batch is padded up to a (batch bucket, sequence bucket)
  so that one CUDA graph per bucket pair serves every request.

Runtime module: standard library only.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zerostart.errors import BundleError, EngineError, PathEscapeError
from zerostart.paths import relative_name

KERNELS_DIR = "kernels"
KERNELS_MANIFEST_NAME = "manifest.json"
KERNELS_FORMAT_VERSION = 1

# Argument dtypes a kernel signature may use (Triton's spelling): pointers, then scalars.
POINTER_DTYPES = ("*fp16", "*fp32", "*i32")
SCALAR_DTYPES = ("i32", "i64", "fp32")
ARG_DTYPES = POINTER_DTYPES + SCALAR_DTYPES
OPS: tuple[str, ...] = ("gemm", "layer_norm", "embed", "attention", "gemm_partial")
OPS += ("splitk_layer_norm",)
# ModernBERT's (zerostart.kernels.triton_modernbert; plan in engine/cuda/modernbert_plan.py)
OPS += ("ln_nobias", "rotary", "gemm_geglu", "attention_band", "mean_pool")
OPS += ("rel_proj", "attention_rel")  # DeBERTa's (zerostart.kernels.triton_deberta)
PTX_KEY = "ptx"  # the image key of a variant's PTX (its arch is KernelManifest.ptx_arch)
THREADS_PER_WARP = 32
I32_MAX = 2**31 - 1  # the kernels take M, N and K as i32 arguments

# Shape buckets. Sequence buckets grow in steps that keep padding waste under ~2x
# at short lengths and match the usual max lengths (128, 256, 384, 512).
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
DEFAULT_SEQ_BUCKETS = (16, 32, 64, 128, 256, 384, 512)

# GEMM epilogue activation codes (the kernels' ACT constexpr).
ACT_NONE, ACT_GELU_ERF, ACT_GELU_TANH, ACT_RELU, ACT_TANH = 0, 1, 2, 3, 4
_ACT_CODES = {"gelu": ACT_GELU_ERF, "relu": ACT_RELU}
_ACT_CODES.update(dict.fromkeys(("gelu_new", "gelu_pytorch_tanh", "gelu_fast"), ACT_GELU_TANH))

_GEMM_ALIGN = 16  # elements: what the "aligned" GEMM variants assume of N, K, lda, ldc


@dataclass(frozen=True)
class KernelImage:
    """One compiled binary of a variant: a cubin for one arch, or the PTX.

    Shared memory and warps are per image: the compiler picks different
    pipelines per arch (e.g. wgmma on sm_90), so they differ between archs.
    """

    file: str  # path inside kernels/
    num_warps: int
    shared_bytes: int  # dynamic shared memory per block (> 48 KiB needs an opt-in)
    global_scratch_bytes: int = 0  # per program; 0 means Triton's scratch argument is null

    @property
    def block(self) -> tuple[int, int, int]:
        """Triton kernels are 1-D blocks of ``num_warps`` warps."""
        return (THREADS_PER_WARP * self.num_warps, 1, 1)


@dataclass(frozen=True)
class KernelVariant:
    """One kernel specialisation: its entry point, arguments, launch rule and images."""

    key: str  # unique in the manifest, e.g. "gemm.act1.res0.al1.m64n64k64"
    op: str  # one of OPS
    entry: str  # the kernel's symbol in the cubin / PTX
    params: dict[str, int]  # constexprs and flags that select this variant
    signature: tuple[tuple[str, str], ...]  # run-time arguments, in order: (name, dtype)
    grid: tuple[str, str, str]  # formulas over problem sizes and ``params``
    images: dict[str, KernelImage] = field(default_factory=dict)  # "sm_90" / "ptx" -> image

    def grid_for(self, sizes: Mapping[str, int]) -> tuple[int, int, int]:
        names = {**self.params, **sizes}
        g = tuple(eval_formula(expr, names) for expr in self.grid)
        if any(x < 1 for x in g):
            raise EngineError(f"kernel {self.key}: empty grid {g} for sizes {dict(sizes)}")
        return (g[0], g[1], g[2])


@dataclass(frozen=True)
class GemmChoice:
    """A measured best GEMM block config for one problem on one arch (a tuning run's output).

    ``config`` is the block-config suffix of a GEMM variant's key
    (``"m64n64k64w4s3"``); ``m`` the rows it was measured at (batch x sequence
    bucket). ``select_gemm`` uses the entry of the same arch, N and K whose M is
    nearest on a log scale, when the bundle holds that config.
    """

    arch: str
    n: int
    k: int
    m: int
    config: str


@dataclass(frozen=True)
class KernelManifest:
    """``kernels/manifest.json``: what was compiled, for which archs, with which compiler."""

    archs: tuple[str, ...]  # cubin archs, e.g. ("sm_80", "sm_90")
    ptx_arch: str  # the virtual arch the PTX targets (JIT-compiled on newer GPUs)
    compiler: dict[str, str]  # {"triton": "3.9.0", "ptxas": "...", "ptx_version": "8.0"}
    batch_buckets: tuple[int, ...]
    seq_buckets: tuple[int, ...]
    variants: tuple[KernelVariant, ...]
    format_version: int = KERNELS_FORMAT_VERSION
    gemm_table: tuple[GemmChoice, ...] = ()  # measured choices; absent in untuned bundles

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, path: object = KERNELS_MANIFEST_NAME
    ) -> KernelManifest:
        try:
            version = int(data["format_version"])
            if version != KERNELS_FORMAT_VERSION:
                raise BundleError(
                    path,
                    f"kernels format version {version} is not supported (this zerostart reads {KERNELS_FORMAT_VERSION})",
                    hint="re-run `zerostart convert --device cuda`",
                )
            variants = tuple(
                KernelVariant(
                    key=str(v["key"]),
                    op=str(v["op"]),
                    entry=str(v["entry"]),
                    params={str(k): int(x) for k, x in v["params"].items()},
                    signature=tuple((str(n), str(d)) for n, d in v["signature"]),
                    grid=(str(v["grid"][0]), str(v["grid"][1]), str(v["grid"][2])),
                    images={
                        str(k): KernelImage(
                            file=str(x["file"]),
                            num_warps=int(x["num_warps"]),
                            shared_bytes=int(x["shared_bytes"]),
                            global_scratch_bytes=int(x.get("global_scratch_bytes", 0)),
                        )
                        for k, x in v["images"].items()
                    },
                )
                for v in data["variants"]
            )
            m = cls(
                archs=tuple(str(a) for a in data["archs"]),
                ptx_arch=str(data["ptx_arch"]),
                compiler={str(k): str(x) for k, x in data["compiler"].items()},
                batch_buckets=tuple(int(x) for x in data["batch_buckets"]),
                seq_buckets=tuple(int(x) for x in data["seq_buckets"]),
                variants=variants,
                format_version=version,
                gemm_table=tuple(
                    GemmChoice(
                        arch=str(x["arch"]),
                        n=int(x["n"]),
                        k=int(x["k"]),
                        m=int(x["m"]),
                        config=str(x["config"]),
                    )
                    for x in data.get("gemm_table", ())
                ),
            )
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
            raise BundleError(path, f"kernels manifest is malformed: {exc!r}") from exc
        m.validate(path)
        return m

    @classmethod
    def load(cls, kernels_dir: str | Path) -> KernelManifest:
        path = Path(kernels_dir) / KERNELS_MANIFEST_NAME
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError as exc:
            raise BundleError(
                path,
                "no compiled GPU kernels in this bundle",
                hint="convert with `zerostart convert --device cuda --arch sm_90 ...`",
            ) from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(path, f"kernels manifest is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise BundleError(path, "kernels manifest must be a JSON object")
        return cls.from_dict(data, path=path)

    def validate(self, path: object = KERNELS_MANIFEST_NAME) -> None:
        keys = set()
        for v in self.variants:
            if v.key in keys:
                raise BundleError(path, f"kernel variant {v.key!r} is listed twice")
            keys.add(v.key)
            if v.op not in OPS:
                raise BundleError(path, f"kernel {v.key!r}: op {v.op!r} is not one of {OPS}")
            for name, dtype in v.signature:
                if dtype not in ARG_DTYPES:
                    raise BundleError(
                        path, f"kernel {v.key!r}: argument {name} has dtype {dtype!r}"
                    )
            for expr in v.grid:
                check_formula(expr)
            missing = {*self.archs, PTX_KEY} - set(v.images)
            if missing:
                raise BundleError(path, f"kernel {v.key!r} has no image for {sorted(missing)}")
            for arch, image in v.images.items():
                if not 1 <= image.num_warps <= 32:
                    raise BundleError(
                        path, f"kernel {v.key!r} [{arch}]: num_warps {image.num_warps}"
                    )
                if image.shared_bytes < 0 or image.global_scratch_bytes < 0:
                    raise BundleError(path, f"kernel {v.key!r} [{arch}]: negative memory size")
                try:
                    relative_name(image.file)
                except PathEscapeError as exc:
                    raise BundleError(
                        path, f"kernel {v.key!r} [{arch}]: file {image.file!r} leaves kernels/"
                    ) from exc
        for c in self.gemm_table:
            if not all(1 <= x <= I32_MAX for x in (c.n, c.k, c.m)) or not c.config.isalnum():
                raise BundleError(path, f"gemm_table entry {c} is malformed")
        if list(self.batch_buckets) != sorted(set(self.batch_buckets)) or not self.batch_buckets:
            raise BundleError(path, "batch_buckets must be strictly increasing and non-empty")
        if list(self.seq_buckets) != sorted(set(self.seq_buckets)) or not self.seq_buckets:
            raise BundleError(path, "seq_buckets must be strictly increasing and non-empty")

    def find(self, op: str, **params: int) -> KernelVariant:
        """The one variant of ``op`` whose parameters include ``params`` (no block choice)."""
        found = [v for v in self.variants if v.op == op and _matches(v, params)]
        if not found:
            raise EngineError(
                f"the bundle has no {op} kernel for {params}",
                hint="re-run `zerostart convert --device cuda` with this version of zerostart",
            )
        return found[0]


def _matches(v: KernelVariant, params: Mapping[str, int]) -> bool:
    return all(v.params.get(k) == x for k, x in params.items())


# -- launch-rule formulas ----------------------------------------------------------
_BINOPS = {
    ast.Add: int.__add__,
    ast.Sub: int.__sub__,
    ast.Mult: int.__mul__,
    ast.FloorDiv: int.__floordiv__,
}
_FUNCS: dict[str, Callable[..., int]] = {"cdiv": lambda a, b: -(-a // b), "max": max, "min": min}


def check_formula(expr: str) -> None:
    """Raise BundleError unless ``expr`` uses only what ``eval_formula`` understands."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise BundleError(KERNELS_MANIFEST_NAME, f"grid formula {expr!r} does not parse") from exc
    for node in ast.walk(tree):
        ok = isinstance(node, ast.Expression | ast.Name | ast.Load | ast.BinOp | ast.Call)
        ok = ok or type(node) in _BINOPS
        ok = ok or (isinstance(node, ast.Constant) and type(node.value) is int)
        if isinstance(node, ast.Call):
            ok = isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords
        if not ok:
            raise BundleError(
                KERNELS_MANIFEST_NAME,
                f"grid formula {expr!r}: {type(node).__name__} is not allowed",
            )


def eval_formula(expr: str, names: Mapping[str, int]) -> int:
    """Evaluate a grid formula over integer ``names`` (problem sizes and variant params)."""
    check_formula(expr)

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise EngineError(f"grid formula {expr!r} needs {node.id!r}, not given")
            return int(names[node.id])
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        fn: Callable[..., int] = _FUNCS[node.func.id]
        return int(fn(*(ev(a) for a in node.args)))

    return ev(ast.parse(expr, mode="eval"))


def activation_code(hidden_act: str) -> int:
    """The GEMM epilogue code for a Hugging Face ``hidden_act`` (same set as the CPU engine)."""
    if hidden_act not in _ACT_CODES:
        raise EngineError(f"hidden_act {hidden_act!r} has no GPU kernel")
    return _ACT_CODES[hidden_act]


# -- variant selection -------------------------------------------------------------
def gemm_aligned(*dims: int) -> bool:
    """Whether the aligned GEMM variant (ints divisible by 16 elements) may run these dims."""
    return all(d % _GEMM_ALIGN == 0 for d in dims)


def gemm_config_name(v: KernelVariant) -> str:
    """A GEMM variant's block config, the last part of its key (``"m64n64k64w4s3"``)."""
    return v.key.rsplit(".", 1)[-1]


def select_gemm(
    manifest: KernelManifest,
    *,
    act: int,
    has_res: bool,
    m: int,
    n: int,
    k: int,
    lda: int,
    ldc: int,
    sm_count: int,
    arch: str | None = None,
    fits: Callable[[KernelVariant], bool] | None = None,
    op: str = "gemm",
) -> KernelVariant:
    """Pick the GEMM variant for one problem.

    ``op``: "gemm", or "gemm_geglu" (ModernBERT's FFN input; its variants carry
    HAS_RES 0 and the same block configs and ALIGNED flag).

    Pool: the variants compiled for this epilogue; the aligned builds (16-byte
    vector loads, and no K mask in the loop, so K must be a multiple of their
    BLOCK_K) when N, K and the strides allow it, else the plain ones.

    Measured first: when the manifest's ``gemm_table`` has entries for ``arch``
    and this (N, K), the config measured best at the nearest M (log scale) is
    taken if the pool holds it. Otherwise the rule: the largest tile that still
    gives every SM at least one tile (big tiles reuse operands best), or, when
    no tile does, the tile with the most programs (small problems are latency
    bound, so parallelism wins), the smaller of those. Remaining ties go to the
    first listed. GPU-free.

    ``fits``: whether a variant can launch on this GPU (its shared memory per
    block within the device's opt-in limit); variants that do not are left out.
    """
    compiled = [
        v
        for v in manifest.variants
        if v.op == op and v.params.get("ACT") == act and v.params.get("HAS_RES") == int(has_res)
    ]
    pool = [v for v in compiled if fits is None or fits(v)]
    if compiled and not pool:
        raise EngineError(
            f"every GEMM kernel for activation {act}, residual {has_res} needs more shared "
            f"memory per block than this GPU allows ({', '.join(v.key for v in compiled)})",
            hint="re-run `zerostart convert --device cuda --arch sm_XY` with this GPU's arch",
        )
    aligned = [
        v for v in pool if v.params.get("ALIGNED") == 1 and k % v.params.get("BLOCK_K", 1) == 0
    ]
    plain = [v for v in pool if v.params.get("ALIGNED", 0) == 0]
    pool = aligned if aligned and gemm_aligned(n, k, lda, ldc) else plain
    if not pool:
        raise EngineError(
            f"the bundle has no GEMM kernel for activation {act}, residual {has_res}"
            f" (M={m}, N={n}, K={k})",
            hint="re-run `zerostart convert --device cuda`",
        )
    if arch is not None:
        measured = [c for c in manifest.gemm_table if (c.arch, c.n, c.k) == (arch, n, k)]
        if measured:
            best = min(measured, key=lambda c: (abs(math.log2(c.m / m)), -c.m))
            for v in pool:
                if gemm_config_name(v) == best.config:
                    return v

    filling = [v for v in pool if tile_count(v, m, n) >= sm_count]
    if filling:
        return max(filling, key=tile_area)  # max keeps the first of equal areas
    # equal parallelism: the smaller tile wastes less on padding (a 1-row, 2-label head)
    return max(pool, key=lambda v: (tile_count(v, m, n), -tile_area(v)))


def tile_count(v: KernelVariant, m: int, n: int) -> int:
    """Programs a GEMM-like variant runs on an M x N output (times its K slices, if split)."""
    tiles = math.ceil(m / v.params["BLOCK_M"]) * math.ceil(n / v.params["BLOCK_N"])
    return tiles * v.params.get("SPLIT_K", 1)


def tile_area(v: KernelVariant) -> int:
    return v.params["BLOCK_M"] * v.params["BLOCK_N"]


def select_splitk(
    manifest: KernelManifest,
    *,
    m: int,
    n: int,
    k: int,
    split_k: int | None = None,
    fits: Callable[[KernelVariant], bool] | None = None,
) -> KernelVariant | None:
    """The split-K partial GEMM (``gemm_partial``) for an M x N x K residual site, or None.

    Eligible: K a multiple of SPLIT_K x BLOCK_K, SPLIT_K equal to ``split_k`` when
    given, fitting the GPU (``fits``). Among those, the same rule as ``select_gemm``
    for few rows: the most programs, then the smaller tile. Whether to split at all
    (how many rows) is the engine's: its workspace bounds it.
    """
    pool = [
        v
        for v in manifest.variants
        if v.op == "gemm_partial"
        and split_k in (None, v.params["SPLIT_K"])
        and k % (v.params["SPLIT_K"] * v.params["BLOCK_K"]) == 0
        and (fits is None or fits(v))
    ]
    if not pool:
        return None
    return max(pool, key=lambda v: (tile_count(v, m, n), -tile_area(v)))


# -- shape buckets -----------------------------------------------------------------
def seq_buckets(max_length: int, base: Sequence[int] = DEFAULT_SEQ_BUCKETS) -> tuple[int, ...]:
    """Sequence buckets up to ``max_length``; ``max_length`` itself is always the last."""
    return tuple(sorted({b for b in base if b < max_length} | {max_length}))


def batch_buckets(max_batch: int, base: Sequence[int] = DEFAULT_BATCH_BUCKETS) -> tuple[int, ...]:
    return tuple(sorted({b for b in base if b < max_batch} | {max_batch}))


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n``; EngineError when none does."""
    for b in buckets:
        if b >= n:
            return b
    raise EngineError(f"size {n} exceeds the largest compiled bucket {buckets[-1]}")


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
