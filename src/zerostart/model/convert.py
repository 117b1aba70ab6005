"""``zerostart convert``: a Hugging Face model folder -> a zerostart bundle.

Everything that is slow, fragile or needs a big library happens here, once, at
build time, so the worker only maps a file and reads one small JSON:

* the config is normalised (BERT and DistilBERT spell the same sizes differently);
* the task, labels, tokenizer settings, maximum length and pooling are decided
  and written into the manifest;
* the weights are rewritten into the engine layout (``zerostart.bundle.layout``):
  linear weights transposed to ``[in, out]``, Q/K/V fused, the query pre-scaled,
  every shape checked against the config, and saved aligned for ``mmap``;
* every file's sha256 is recorded so a tampered bundle is refused at start;
* a tensor holding NaN or infinity (or a value that overflows float16 in a GPU
  bundle) is refused, naming it: such a model answers every request with a
  non-finite score. ``allow_nonfinite`` turns the refusal into a logged warning.

A ``pytorch_model.bin`` is read by ``torchbin`` (a restricted unpickler), never
by torch. Build-time module: may use numpy and the tokenizer helpers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zerostart.bundle.launch import KERNELS_DIR
from zerostart.bundle.layout import (
    GEMM_GROUP,
    LAYOUT_VERSION,
    layer_prefix,
    tensor_shapes,
)
from zerostart.bundle.manifest import (
    MANIFEST_NAME,
    TASKS,
    TOKENIZER_LIB_NAME,
    TOKENIZER_TABLES_NAME,
    VOCAB_NAME,
    WEIGHTS_NAME,
    FileEntry,
    Manifest,
)
from zerostart.bundle.weights import write_weights
from zerostart.errors import BundleError, ConvertError
from zerostart.model import deberta
from zerostart.model import hf_folder as hf
from zerostart.tokenize import write_wordpiece_tables

Progress = Callable[[str, float], None]

log = logging.getLogger("zerostart.convert")

HASH_CHUNK_BYTES = 8 * 1024 * 1024
_DEVICE_DTYPES = {"cpu": "float32", "cuda": "float16"}
_PRECISIONS = ("float32", "int8", "bfloat16")
NO_CPU_KERNELS = "none"  # --cpu-arch none: no native kernels, the numpy engine


def _cpu_archs(cpu_archs: Sequence[str] | None, precision: str, dst: Path) -> tuple[str, ...]:
    from zerostart.kernels.cpu_build import PRECISION_DEFAULT_ARCHS, arch_flags

    if cpu_archs is None:
        return PRECISION_DEFAULT_ARCHS[precision]
    archs = tuple(a for a in cpu_archs if a)
    if archs in ((), (NO_CPU_KERNELS,)):
        if precision != "float32":
            raise ConvertError(
                dst, f"--precision {precision} needs native kernels, not --cpu-arch none"
            )
        return ()
    if NO_CPU_KERNELS in archs:
        raise ConvertError(dst, "--cpu-arch none cannot be combined with other targets")
    for arch in archs:
        arch_flags(arch)  # a malformed name fails here, before the weights are read
    return archs


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    device: str = "cpu",
    task: str | None = None,
    max_length: int | None = None,
    progress: Progress | None = None,
    archs: Sequence[str] = (),
    kernels_from: str | Path | None = None,
    allow_nonfinite: bool = False,
    name: str | None = None,
    cpu_archs: Sequence[str] | None = None,
    precision: str = "float32",
    gemm_tuning: str | Path | None = None,
) -> Manifest:
    """Convert the Hugging Face folder ``src`` into a bundle at ``dst`` and return its manifest.

    ``dst`` is replaced atomically if it is already a bundle; any other
    non-empty folder is refused rather than overwritten. GPU kernels are
    compiled for ``archs`` (needs Triton), or copied from ``kernels_from``, a
    ``kernels/`` folder compiled earlier for a model of the same shape (same
    variants and sequence buckets, checked); kernels depend on the shape only,
    never on the weights. Raises ConvertError naming the tensor if one holds NaN
    or infinity (after the cast to the bundle's dtype), unless
    ``allow_nonfinite``, which logs a warning instead. ``name`` is the model's
    name as clients see it (TEI's ``model_id``, OpenAI's ``model``); default:
    the bundle folder's name.

    ``cpu_archs`` (CPU bundles): the targets to compile native kernels for (gcc
    ``-march`` names, e.g. ``x86-64-v3``; see ``zerostart.kernels.cpu_build``);
    None takes the defaults for ``precision``; ``()`` or ``("none",)`` writes no
    kernels (the numpy engine runs it). ``precision``: "float32" (default),
    "int8" or "bfloat16" for the encoder's matrix weights (CPU only).

    ``gemm_tuning`` (GPU bundles): a ``tools/gpu_tune.py`` result whose measured
    GEMM block configs the bundle's launch rule follows (compiled in, or, with
    ``kernels_from``, kept where the folder holds them); default: the results
    shipped in ``zerostart/kernels/tuning/`` for the archs.
    """
    report: Progress = progress or (lambda _stage, _fraction: None)
    src, dst = Path(src), Path(dst)
    if device not in _DEVICE_DTYPES:
        raise ConvertError(dst, f"device {device!r} is not one of {tuple(_DEVICE_DTYPES)}")
    if task is not None and task not in TASKS:
        raise ConvertError(src, f"task {task!r} is not one of {TASKS}")
    if precision not in _PRECISIONS:
        raise ConvertError(dst, f"precision {precision!r} is not one of {_PRECISIONS}")
    if device != "cpu" and (cpu_archs or precision != "float32"):
        raise ConvertError(dst, "--cpu-arch and --precision are for --device cpu")
    if gemm_tuning is not None and device != "cuda":
        raise ConvertError(dst, "--gemm-tuning is for --device cuda")
    if device == "cpu":
        cpu_archs = _cpu_archs(cpu_archs, precision, dst)
    _check_destination(dst)
    if not src.is_dir():
        raise ConvertError(src, "model folder not found")
    model_dir, pooling, st_max_length = hf.sentence_transformers(src)
    report("config", 0.0)
    cfg_path = model_dir / "config.json"
    config = hf.read_json(cfg_path, required=True)
    architecture, model_config = hf.model_config(config, cfg_path)
    if architecture == deberta.ARCHITECTURE:  # before the weights are read
        deberta.check_target(device, precision, cfg_path)
    if architecture == "modernbert":
        from zerostart.model.modernbert import check_target

        check_target(device, precision, cfg_path)
    the_task = task or hf.infer_task(
        config, cfg_path, is_sentence_transformer=st_max_length is not None
    )
    labels, problem_type = hf.read_labels(config, cfg_path, the_task)
    with tempfile.TemporaryDirectory(prefix=".zerostart-tokenizer.") as tables:
        settings, vocab, vocab_source, n_tokens = hf.read_tokenizer(model_dir, Path(tables))
        if n_tokens > model_config.vocab_size:  # more rows than tokens is fine (e5: 250,037)
            raise ConvertError(
                vocab_source,
                f"vocabulary has {n_tokens} tokens but config.json says vocab_size={model_config.vocab_size}",
                hint="token ids past the embedding table cannot be served",
            )
        length = hf.choose_max_length(model_dir, model_config, max_length, st_max_length)

        report("read weights", 0.1)
        source, weights_files = hf.read_source_weights(model_dir)
        manifest = Manifest(
            architecture=architecture,
            task=the_task,
            config=model_config,
            tokenizer=settings,
            max_length=length,
            dtype=_DEVICE_DTYPES[device] if precision == "float32" else precision,
            device=device,
            labels=labels,
            problem_type=problem_type,
            pooling=pooling,
            source={
                "name": name or Path(dst).resolve().name,
                "folder": src.resolve().name,
                "model_type": str(config.get("model_type")),
                "architectures": list(config.get("architectures") or []),
                "weights_files": [p.name for p in weights_files],
                "weights_sha256": _sha256_files(weights_files),
            },
        )
        try:
            manifest.validate(cfg_path)
        except BundleError as exc:
            raise ConvertError(exc.path, exc.problem) from exc
        report("layout", 0.4)
        dtype = np.float16 if device == "cuda" else np.float32
        used = _Recording(source)
        if architecture == deberta.ARCHITECTURE:
            tensors = deberta.engine_tensors(used, manifest, config, weights_files[0])
        else:
            tensors = _engine_tensors(used, manifest, weights_files[0], dtype)
        _check_finite(used.read, tensors, weights_files[0], allow_nonfinite)
        report("write", 0.6)
        if (archs or kernels_from) and device != "cuda":
            raise ConvertError(dst, "GPU kernels (--arch) need --device cuda")
        if archs and kernels_from:
            raise ConvertError(dst, "give either archs to compile kernels for, or kernels to copy")
        if kernels_from is not None:
            check_prebuilt_kernels(manifest, Path(kernels_from))
        _write_bundle(
            dst,
            manifest,
            tensors,
            vocab,
            report,
            archs,
            kernels_from,
            cpu_archs or (),
            gemm_tuning,
            tables_dir=Path(tables) if settings.model != "WordPiece" else None,
        )
        report("done", 1.0)
        return Manifest.load(dst)


def _site_key(key: str) -> str:
    """A variant's key without its GEMM block config (any config compiled will do)."""
    return key.rsplit(".", 1)[0] if key.startswith("gemm.") else key


def check_prebuilt_kernels(manifest: Manifest, kernels_dir: Path) -> None:
    """Refuse a kernels/ folder that lacks a variant or a sequence bucket this model needs."""
    from zerostart.bundle.launch import KernelManifest, seq_buckets
    from zerostart.kernels.variants import model_specs

    try:
        km = KernelManifest.load(kernels_dir)
    except BundleError as exc:
        raise ConvertError(exc.path, exc.problem, hint=exc.hint) from exc
    missing = sorted(
        {_site_key(s.key) for s in model_specs(manifest)} - {_site_key(v.key) for v in km.variants}
    )
    if missing:
        raise ConvertError(
            kernels_dir,
            f"these kernels were compiled for another model shape: missing {', '.join(missing)}",
            hint="compile for this model instead (--arch)",
        )
    want = seq_buckets(manifest.max_length)
    if km.seq_buckets != want:
        raise ConvertError(
            kernels_dir,
            f"kernels' sequence buckets {list(km.seq_buckets)} are not this model's {list(want)}",
            hint="compile for this model instead (--arch)",
        )


# -- reading the Hugging Face folder ----------------------------------------------


def _engine_tensors(
    source: Mapping[str, np.ndarray], manifest: Manifest, path: Path, dtype: type[np.floating[Any]]
) -> dict[str, np.ndarray]:
    """Map Hugging Face tensor names to the engine layout, checking every shape."""
    if manifest.architecture == "modernbert":
        from zerostart.model import modernbert

        return modernbert.engine_tensors(source, manifest, path, dtype)
    bert = manifest.architecture == "bert"
    model_type = str(manifest.source.get("model_type", manifest.architecture))
    roberta = model_type in hf.ROBERTA_TYPES
    prefix = "roberta." if roberta else "bert." if bert else "distilbert."
    c = manifest.config
    h = c.hidden_size

    def get(name: str, shape: tuple[int, ...], *, prefixed: bool = True) -> np.ndarray:
        names = [prefix + name, name] if prefixed else [name]
        if name.endswith("LayerNorm.weight"):
            names += [n[: -len("weight")] + "gamma" for n in names]
        elif name.endswith("LayerNorm.bias"):
            names += [n[: -len("bias")] + "beta" for n in names]
        for n in names:
            if n in source:
                arr = source[n]
                if arr.shape != shape:
                    raise ConvertError(
                        path,
                        f"tensor {n!r} has shape {list(arr.shape)}, expected {list(shape)} from config.json",
                    )
                return arr
        raise ConvertError(path, f"missing tensor {names[0]!r}")

    def linear(
        name: str, n_in: int, n_out: int, *, prefixed: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        w = get(name + ".weight", (n_out, n_in), prefixed=prefixed)  # torch Linear: [out, in]
        return w.T, get(name + ".bias", (n_out,), prefixed=prefixed)

    out: dict[str, np.ndarray] = {}
    out["embed.word"] = get("embeddings.word_embeddings.weight", (c.vocab_size, h))
    out["embed.position"] = _positions(source, prefix, manifest, path, get)
    if bert:
        out["embed.token_type"] = get(
            "embeddings.token_type_embeddings.weight", (c.type_vocab_size, h)
        )
    out["embed.norm.weight"] = get("embeddings.LayerNorm.weight", (h,))
    out["embed.norm.bias"] = get("embeddings.LayerNorm.bias", (h,))
    scale = 1.0 / math.sqrt(h // c.num_heads)
    for i in range(c.num_layers):
        p = layer_prefix(i)
        if bert:
            s = f"encoder.layer.{i}."
            q, k, v = (linear(s + f"attention.self.{n}", h, h) for n in ("query", "key", "value"))
            o = linear(s + "attention.output.dense", h, h)
            n1 = s + "attention.output.LayerNorm"
            up = linear(s + "intermediate.dense", h, c.intermediate_size)
            down = linear(s + "output.dense", c.intermediate_size, h)
            n2 = s + "output.LayerNorm"
        else:
            s = f"transformer.layer.{i}."
            q, k, v = (linear(s + f"attention.{n}", h, h) for n in ("q_lin", "k_lin", "v_lin"))
            o = linear(s + "attention.out_lin", h, h)
            n1 = s + "sa_layer_norm"
            up = linear(s + "ffn.lin1", h, c.intermediate_size)
            down = linear(s + "ffn.lin2", c.intermediate_size, h)
            n2 = s + "output_layer_norm"
        # Scale in float64 so the only rounding is the final cast.
        out[p + "attn.qkv.weight"] = np.concatenate([q[0] * np.float64(scale), k[0], v[0]], axis=1)
        out[p + "attn.qkv.bias"] = np.concatenate([q[1] * np.float64(scale), k[1], v[1]])
        out[p + "attn.out.weight"], out[p + "attn.out.bias"] = o
        out[p + "attn.norm.weight"] = get(n1 + ".weight", (h,))
        out[p + "attn.norm.bias"] = get(n1 + ".bias", (h,))
        out[p + "ffn.up.weight"], out[p + "ffn.up.bias"] = up
        out[p + "ffn.down.weight"], out[p + "ffn.down.bias"] = down
        out[p + "ffn.norm.weight"] = get(n2 + ".weight", (h,))
        out[p + "ffn.norm.bias"] = get(n2 + ".bias", (h,))
    n_labels = len(manifest.labels)
    if manifest.task == "sequence-classification":
        if roberta:
            # RobertaClassificationHead: dense + tanh on <s>, then out_proj: BERT's pooler +
            # classifier, under other names.
            dense = linear("classifier.dense", h, h, prefixed=False)
            out["head.pooler.weight"], out["head.pooler.bias"] = dense
        elif bert:
            out["head.pooler.weight"], out["head.pooler.bias"] = linear("pooler.dense", h, h)
        else:
            pre = linear("pre_classifier", h, h, prefixed=False)
            out["head.pre_classifier.weight"], out["head.pre_classifier.bias"] = pre
    if manifest.task != "embeddings":
        head = (
            "classifier.out_proj"
            if roberta and manifest.task == "sequence-classification"
            else "classifier"
        )
        cls = linear(head, h, n_labels, prefixed=False)
        out["head.classifier.weight"], out["head.classifier.bias"] = cls
    # File order = the engine's access order (see layout.tensor_shapes).
    if manifest.dtype in GEMM_GROUP:
        from zerostart.model.quantize import reduce_precision

        return reduce_precision(out, manifest)
    return {name: np.ascontiguousarray(out[name], dtype=dtype) for name in tensor_shapes(manifest)}


class _Recording(Mapping[str, np.ndarray]):
    """A read-only view of the source tensors that remembers which ones were read."""

    def __init__(self, tensors: Mapping[str, np.ndarray]) -> None:
        self._tensors = tensors
        self.read: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        arr = self._tensors[name]
        self.read[name] = arr
        return arr

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors


def _check_finite(
    source: Mapping[str, np.ndarray],
    tensors: Mapping[str, np.ndarray],
    path: Path,
    allow: bool,
) -> None:
    """Refuse (or warn about) NaN / infinity in the tensors the model uses, naming them.

    ``source``: the checkpoint tensors the conversion read (unused ones do not
    matter); ``tensors``: the engine tensors after the cast to the bundle dtype.
    """
    problems = []
    for name, arr in source.items():
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = int(arr.size - np.isfinite(arr).sum())
            problems.append(f"tensor {name!r} holds {bad} NaN or infinite value(s)")
    if not problems:  # finite at the source: a cast to float16 can still overflow
        for name, arr in tensors.items():
            if not np.isfinite(arr).all():
                problems.append(
                    f"engine tensor {name!r} overflows {arr.dtype} (values beyond its range)"
                )
    if not problems:
        return
    message = "; ".join(problems[:5]) + (
        f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    )
    if allow:
        log.warning("%s: %s (kept: allow_nonfinite)", path, message)
        return
    raise ConvertError(
        path,
        message + ": the model would answer with NaN",
        hint="fix the checkpoint, or pass --allow-nonfinite to convert it anyway",
    )


def _positions(
    source: Mapping[str, np.ndarray],
    prefix: str,
    manifest: Manifest,
    path: Path,
    get: Callable[..., np.ndarray],
) -> np.ndarray:
    c = manifest.config
    name = "embeddings.position_embeddings.weight"
    if manifest.architecture == "distilbert" and prefix + name not in source and name not in source:
        # A DistilBERT trained with sinusoidal_pos_embds may omit the (frozen) table.
        pos = np.arange(c.max_position_embeddings, dtype=np.float64)[:, None]
        j = np.arange(c.hidden_size)
        angle = pos / np.power(10000.0, 2 * (j // 2) / c.hidden_size)
        table = np.empty_like(angle)
        table[:, 0::2] = np.sin(angle[:, 0::2])
        table[:, 1::2] = np.cos(angle[:, 1::2])
        return table
    model_type = str(manifest.source.get("model_type", manifest.architecture))
    offset = hf.position_offset(model_type, {"pad_token_id": c.pad_token_id})
    table = get(name, (c.max_position_embeddings + offset, c.hidden_size))
    return table[offset:]


# -- writing the bundle --------------------------------------------------------------


def _check_destination(dst: Path) -> None:
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise ConvertError(dst, "destination exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / MANIFEST_NAME).is_file():
        raise ConvertError(
            dst,
            "destination is a non-empty folder that is not a zerostart bundle: refusing to overwrite it",
            hint="choose a new folder, or remove this one yourself",
        )


def _write_bundle(
    dst: Path,
    manifest: Manifest,
    tensors: Mapping[str, np.ndarray],
    vocab: list[str],
    report: Progress,
    archs: Sequence[str] = (),
    kernels_from: str | Path | None = None,
    cpu_archs: Sequence[str] = (),
    gemm_tuning: str | Path | None = None,
    *,
    tables_dir: Path | None = None,
) -> None:
    """Write into a temporary sibling folder, then rename it into place.

    The tokenizer goes in as vocab.txt plus its mapped tokenizer.bin (WordPiece:
    ``vocab``) or as the tokenizer.bin compiled into ``tables_dir`` (every other kind).
    """
    if any("\n" in t or "\r" in t for t in vocab):
        raise ConvertError(
            dst, "a vocabulary token contains a line break; vocab.txt cannot hold it"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    old: Path | None = None
    try:
        weights_path = tmp / WEIGHTS_NAME
        write_weights(weights_path, tensors, {"format": "np", "zerostart.layout": LAYOUT_VERSION})
        tokenizer_name = manifest.tokenizer.tables_name
        names = [WEIGHTS_NAME, tokenizer_name]
        if tables_dir is None:
            (tmp / VOCAB_NAME).write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
            # and the same vocabulary as tables the worker maps instead of parsing vocab.txt
            write_wordpiece_tables(tmp / TOKENIZER_TABLES_NAME, vocab)
            names.append(TOKENIZER_TABLES_NAME)
        else:
            shutil.copyfile(tables_dir / tokenizer_name, tmp / tokenizer_name)
        if tables_dir is not None and (tables_dir / TOKENIZER_LIB_NAME).is_file():
            shutil.copyfile(tables_dir / TOKENIZER_LIB_NAME, tmp / TOKENIZER_LIB_NAME)  # its C
            names.append(TOKENIZER_LIB_NAME)
        if archs or kernels_from is not None:
            from zerostart.bundle.launch import KernelManifest
            from zerostart.kernels.variants import apply_tuning, load_tuning, packaged_tuning
        if archs:  # GPU kernels, compiled ahead of time (Triton, build time only)
            from zerostart.kernels.aot import compile_for_bundle

            tuning = None if gemm_tuning is None else load_tuning(gemm_tuning)
            compile_for_bundle(manifest, tmp, list(archs), report, tuning=tuning)
        elif kernels_from is not None:
            shutil.copytree(kernels_from, tmp / KERNELS_DIR)
            km = KernelManifest.load(tmp / KERNELS_DIR)
            choices = packaged_tuning(km.archs) if gemm_tuning is None else load_tuning(gemm_tuning)
            kept = apply_tuning(tmp / KERNELS_DIR, manifest, choices)
            log.info("kernels copied from %s; %d measured GEMM choices apply", kernels_from, kept)
        if archs or kernels_from is not None:
            names += sorted(p.relative_to(tmp).as_posix() for p in (tmp / KERNELS_DIR).iterdir())
        if cpu_archs:  # CPU kernels, one shared library per target (gcc, build time only)
            from zerostart.engine.cpu_tuning import BUNDLE_TABLE
            from zerostart.kernels.cpu_build import build_for_bundle

            builds = build_for_bundle(tmp, cpu_archs, manifest.dtype, report)
            manifest = manifest._replace(cpu_kernels=builds)
            names += [b.file for b in builds.values()] + [BUNDLE_TABLE]
        report("hash", 0.8)
        files = {name: _file_entry(tmp / name) for name in names}
        (tmp / MANIFEST_NAME).write_text(manifest.with_files(files).to_json(), encoding="utf-8")
        for name in (*names[:3], MANIFEST_NAME):
            _fsync(tmp / name)
        if dst.exists():
            _check_destination(dst)  # re-check: it may have changed while we wrote
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
            os.replace(dst, old / "bundle")
        os.replace(tmp, dst)
        _fsync(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dst.exists():
            os.replace(old / "bundle", dst)  # put the previous bundle back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _file_entry(path: Path) -> FileEntry:
    header = ""
    if path.name.endswith(".safetensors"):
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            f.seek(0)
            header = hashlib.sha256(f.read(8 + n)).hexdigest()
    return FileEntry(sha256=_sha256_files([path]), size=path.stat().st_size, header_sha256=header)


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
