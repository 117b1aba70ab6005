"""The bundle manifest: everything the worker needs to know about a model.

A bundle is a folder::

    manifest.json          this file's schema (format_version 1)
    weights.safetensors    every tensor in engine layout, 64-byte aligned, one file
    vocab.txt              WordPiece bundles: the vocabulary, one token per line
    tokenizer.bin          the tokenizer's tables, mapped by the worker
                           (``zerostart.tokenize._compiled``): Unigram and BPE always;
                           WordPiece bundles since issue 19 (the vocabulary as a mapped
                           hash table, ``_wpvocab.py``; without it vocab.txt is parsed)
    tokenizer.so           beside tokenizer.bin, optional: the tokenizer's native inner
                           loops (``zerostart.tokenize._native``)
    kernels/cpu/*.so       CPU bundles: the native kernels, one build per target CPU
                           (``cpu_kernels`` below); none means the numpy engine

The manifest is the only JSON the worker parses before serving, and it records
the sha256 of every other file so a tampered bundle is refused.

Runtime module: imports only the standard library.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from zerostart._records import Frozen
from zerostart.errors import BundleError, PathEscapeError
from zerostart.paths import relative_name

FORMAT_VERSION = 1
_set = object.__setattr__  # a Frozen record's __init__ sets its fields with this


def _set_all(record: Frozen, values: dict[str, Any]) -> None:
    """Set every field of ``record`` from ``values`` (its ``__init__``'s locals)."""
    for name in record.__slots__:
        _set(record, name, values[name])


_CONVERT_HINT = "create one with `zerostart convert <hf-model-folder> <bundle-dir>`"
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.safetensors"
VOCAB_NAME = "vocab.txt"
TOKENIZER_TABLES_NAME = "tokenizer.bin"
TOKENIZER_LIB_NAME = "tokenizer.so"
TOKENIZER_MODELS = ("WordPiece", "Unigram", "BPE")

ARCHITECTURES = ("bert", "distilbert", "deberta-v2", "modernbert")
TASKS = ("sequence-classification", "token-classification", "embeddings")
# float32/float16: every tensor. int8/bfloat16 (CPU, opt-in): the encoder's matrix weights
# only (int8 per output channel with float32 scales); embeddings, norms and biases stay float32.
DTYPES = ("float32", "float16", "int8", "bfloat16")
CPU_KERNELS_DIR = "kernels/cpu"
DEVICES = ("cpu", "cuda")
POOLING_MODES = ("cls", "mean")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


class ModelConfig(Frozen):
    """Shape and numerics of the encoder, normalised across BERT and DistilBERT."""

    __slots__ = (
        "classifier_act",
        "classifier_pooling",
        "global_every",
        "hidden_act",
        "hidden_size",
        "intermediate_size",
        "layer_norm_eps",
        "local_rope_theta",
        "local_window",
        "max_position_embeddings",
        "num_heads",
        "num_layers",
        "pad_token_id",
        "pooler_act",
        "relative_span",
        "rope_theta",
        "type_vocab_size",
        "vocab_size",
    )
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int  # 0 for DistilBERT (no token type embeddings)
    layer_norm_eps: float
    hidden_act: str  # "gelu" (erf) or "gelu_new"/"gelu_pytorch_tanh" (tanh approximation)
    pad_token_id: int
    # DeBERTa-v2/v3 (bundle/deberta_layout.py): rows per side of the relative tables
    # (position_buckets, or max_relative_positions), and the ContextPooler's activation.
    relative_span: int
    pooler_act: str
    # ModernBERT only (architecture "modernbert", zerostart.model.modernbert); the defaults
    # leave every other family unchanged. Rotary theta of global / local layers; a local
    # layer's query i sees keys j with |i - j| <= local_window; layer i is global when
    # i % global_every == 0; the classifier head's pooling ("cls"/"mean") and activation.
    rope_theta: float
    local_rope_theta: float
    local_window: int
    global_every: int
    classifier_pooling: str
    classifier_act: str

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        vocab_size: int,
        max_position_embeddings: int,
        type_vocab_size: int,
        layer_norm_eps: float,
        hidden_act: str,
        pad_token_id: int = 0,
        relative_span: int = 0,
        pooler_act: str = "",
        rope_theta: float = 0.0,
        local_rope_theta: float = 0.0,
        local_window: int = 0,
        global_every: int = 0,
        classifier_pooling: str = "cls",
        classifier_act: str = "",
    ) -> None:
        _set_all(self, locals())


class TokenizerSettings(Frozen):
    """The tokenizer: BERT WordPiece's options, or another kind's spec; mirrors tokenizer.json.

    ``model`` "WordPiece" (the fields below; vocabulary in vocab.txt) or a kind
    that ``zerostart.tokenize`` assembles from parts ("Unigram", "BPE"): then
    ``spec`` holds tokenizer.json's normaliser, pre-tokeniser, post-processor,
    decoder and added tokens, and the tables are in tokenizer.bin. The token
    fields name the special tokens in both cases (NER and padding use them).
    """

    __slots__ = (
        "clean_text",
        "cls_token",
        "continuing_subword_prefix",
        "handle_chinese_chars",
        "lowercase",
        "mask_token",
        "max_input_chars_per_word",
        "model",
        "pad_token",
        "sep_token",
        "spec",
        "strip_accents",
        "unk_token",
    )
    lowercase: bool
    strip_accents: bool | None  # None: follow ``lowercase`` (Hugging Face's rule)
    handle_chinese_chars: bool
    clean_text: bool
    unk_token: str
    cls_token: str
    sep_token: str
    pad_token: str
    mask_token: str
    continuing_subword_prefix: str
    max_input_chars_per_word: int
    model: str
    spec: dict[str, Any]

    def __init__(
        self,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        handle_chinese_chars: bool = True,
        clean_text: bool = True,
        unk_token: str = "[UNK]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        mask_token: str = "[MASK]",
        continuing_subword_prefix: str = "##",
        max_input_chars_per_word: int = 100,
        model: str = "WordPiece",
        spec: dict[str, Any] | None = None,
    ) -> None:
        _set_all(self, {**locals(), "spec": {} if spec is None else spec})

    @property
    def tables_name(self) -> str:
        """The bundle file holding the vocabulary: vocab.txt or tokenizer.bin."""
        return VOCAB_NAME if self.model == "WordPiece" else TOKENIZER_TABLES_NAME


class Pooling(Frozen):
    """How /embed pools token states: ``mode`` "cls" or "mean"; ``normalize``: the
    default for /embed when the request does not say."""

    __slots__ = ("mode", "normalize")
    mode: str
    normalize: bool

    def __init__(self, mode: str = "cls", normalize: bool = False) -> None:
        _set(self, "mode", mode)
        _set(self, "normalize", normalize)


class FileEntry(Frozen):
    """A bundle file's sha256 (hex) and size (bytes); ``header_sha256``: safetensors files
    only, the sha256 of the 8-byte length + JSON header, which is what
    ``Bundle.open(verify="fast")`` checks instead of hashing the whole file."""

    __slots__ = ("header_sha256", "sha256", "size")
    sha256: str
    size: int
    header_sha256: str

    def __init__(self, sha256: str, size: int, header_sha256: str = "") -> None:
        _set(self, "sha256", sha256)
        _set(self, "size", size)
        _set(self, "header_sha256", header_sha256)


class CpuKernelBuild(Frozen):
    """One native CPU kernel library in the bundle, built for one target CPU."""

    __slots__ = ("build_s", "features", "file")
    file: str  # bundle-relative path, e.g. "kernels/cpu/libzs_cpu.x86-64-v3.so"
    # /proc/cpuinfo flags the build may use (from the compiler's -march); a CPU lacking
    # any of them cannot run it.
    features: tuple[str, ...]
    build_s: float  # compile time at convert (0 when taken from the build cache)

    def __init__(self, file: str, features: tuple[str, ...] = (), build_s: float = 0.0) -> None:
        _set(self, "file", file)
        _set(self, "features", features)
        _set(self, "build_s", build_s)


class Manifest(Frozen):
    """A bundle's manifest.json; ``_replace(**changes)`` is a changed copy."""

    __slots__ = (
        "architecture",
        "config",
        "cpu_kernels",
        "device",
        "dtype",
        "files",
        "format_version",
        "labels",
        "max_length",
        "pooling",
        "problem_type",
        "source",
        "task",
        "tokenizer",
    )
    architecture: str
    task: str
    config: ModelConfig
    tokenizer: TokenizerSettings
    max_length: int
    dtype: str
    device: str
    labels: tuple[str, ...]  # index -> label name; empty for embeddings
    problem_type: str
    pooling: Pooling
    files: dict[str, FileEntry]
    source: dict[str, Any]  # provenance: folder, model name, licence
    # CPU bundles: target name (gcc -march, e.g. "x86-64-v4") -> its kernel build.
    cpu_kernels: dict[str, CpuKernelBuild]
    format_version: int

    def __init__(
        self,
        architecture: str,
        task: str,
        config: ModelConfig,
        tokenizer: TokenizerSettings,
        max_length: int,
        dtype: str = "float32",
        device: str = "cpu",
        labels: tuple[str, ...] = (),
        problem_type: str = "single_label_classification",
        pooling: Pooling | None = None,
        files: dict[str, FileEntry] | None = None,
        source: dict[str, Any] | None = None,
        cpu_kernels: dict[str, CpuKernelBuild] | None = None,
        format_version: int = FORMAT_VERSION,
    ) -> None:
        _set_all(
            self,
            {
                **locals(),
                "pooling": Pooling() if pooling is None else pooling,
                "files": {} if files is None else files,
                "source": {} if source is None else source,
                "cpu_kernels": {} if cpu_kernels is None else cpu_kernels,
            },
        )

    def with_files(self, files: dict[str, FileEntry]) -> Manifest:
        return self._replace(files=dict(files))

    # -- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-able data (what ``dataclasses.asdict`` gave): a deep copy."""
        import copy  # build time (convert, tests): not on the worker's path

        data = self._asdict()
        data["config"] = self.config._asdict()
        data["tokenizer"] = {**self.tokenizer._asdict(), "spec": copy.deepcopy(self.tokenizer.spec)}
        data["pooling"] = self.pooling._asdict()
        data["files"] = {k: v._asdict() for k, v in self.files.items()}
        data["source"] = copy.deepcopy(self.source)
        data["cpu_kernels"] = {k: v._asdict() for k, v in self.cpu_kernels.items()}
        data["labels"] = list(self.labels)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, path: object = MANIFEST_NAME) -> Manifest:
        try:
            version = int(data["format_version"])
            if version != FORMAT_VERSION:
                raise BundleError(
                    path,
                    f"bundle format version {version} is not supported (this zerostart reads {FORMAT_VERSION})",
                    hint="re-run `zerostart convert` with this version of zerostart",
                )
            m = cls(
                architecture=str(data["architecture"]),
                task=str(data["task"]),
                config=ModelConfig(**data["config"]),
                tokenizer=TokenizerSettings(**data["tokenizer"]),
                max_length=int(data["max_length"]),
                dtype=str(data.get("dtype", "float32")),
                device=str(data.get("device", "cpu")),
                labels=tuple(str(x) for x in data.get("labels", ())),
                problem_type=str(data.get("problem_type", "single_label_classification")),
                pooling=Pooling(**data.get("pooling", {})),
                files={k: FileEntry(**v) for k, v in data.get("files", {}).items()},
                source=dict(data.get("source", {})),
                cpu_kernels={
                    str(k): CpuKernelBuild(
                        file=str(v["file"]),
                        features=tuple(str(f) for f in v.get("features", ())),
                        build_s=float(v.get("build_s", 0.0)),
                    )
                    for k, v in data.get("cpu_kernels", {}).items()
                },
                format_version=version,
            )
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(path, f"manifest is malformed: {exc!r}") from exc
        m.validate(path)
        return m

    @classmethod
    def load(cls, bundle_dir: str | Path) -> Manifest:
        path = Path(bundle_dir) / MANIFEST_NAME
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError) as exc:
            folder = Path(bundle_dir)
            problem, hint = "no manifest: this folder is not a zerostart bundle", _CONVERT_HINT
            if not os.path.lexists(folder):
                path, problem, hint = folder, "does not exist", f"check the path, or {hint}"
            elif not folder.is_dir():
                path, problem = folder, "is not a folder (a bundle is a folder)"
            raise BundleError(path, problem, hint=hint) from exc
        except OSError as exc:  # ELOOP: a symlink loop; EACCES; EISDIR; EIO
            raise BundleError(path, f"cannot read the manifest: {exc.strerror or exc}") from exc
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(path, f"manifest is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise BundleError(path, "manifest must be a JSON object")
        return cls.from_dict(data, path=path)

    def validate(self, path: object = MANIFEST_NAME) -> None:
        def bad(problem: str) -> BundleError:
            return BundleError(path, problem)

        if self.architecture not in ARCHITECTURES:
            raise bad(f"architecture {self.architecture!r} is not one of {ARCHITECTURES}")
        if self.tokenizer.model not in TOKENIZER_MODELS:
            raise bad(f"tokenizer model {self.tokenizer.model!r} is not one of {TOKENIZER_MODELS}")
        if self.task not in TASKS:
            raise bad(f"task {self.task!r} is not one of {TASKS}")
        if self.dtype not in DTYPES:
            raise bad(f"dtype {self.dtype!r} is not one of {DTYPES}")
        if self.device not in DEVICES:
            raise bad(f"device {self.device!r} is not one of {DEVICES}")
        for name in self.files:
            _check_name(name, f"files entry {name!r}", path)
        for arch, build in self.cpu_kernels.items():
            what = f"cpu_kernels[{arch!r}].file {build.file!r}"
            if not _check_name(build.file, what, path).startswith(CPU_KERNELS_DIR + "/"):
                raise bad(f"{what} is not under {CPU_KERNELS_DIR}/")
        if self.pooling.mode not in POOLING_MODES:
            raise bad(f"pooling mode {self.pooling.mode!r} is not one of {POOLING_MODES}")
        if self.problem_type not in PROBLEM_TYPES:
            raise bad(f"problem_type {self.problem_type!r} is not one of {PROBLEM_TYPES}")
        if self.task != "embeddings" and not self.labels:
            raise bad(f"task {self.task} needs labels")
        if self.architecture == "deberta-v2" and self.config.relative_span < 1:
            raise bad("a deberta-v2 bundle needs relative_span >= 1")
        if self.config.hidden_size % self.config.num_heads:
            raise bad("hidden_size is not a multiple of num_heads")
        if not 2 < self.max_length <= self.config.max_position_embeddings:
            raise bad(
                f"max_length {self.max_length} must be in 3..{self.config.max_position_embeddings}"
            )


def _check_name(name: str, what: str, path: object) -> str:
    """A file name of the manifest, refused unless it stays in the bundle folder.

    The manifest is data: ``../../etc/passwd`` or ``/etc/passwd`` would make the
    worker stat and hash a file outside the bundle (and report its size). The
    bundle folder's own symlinks are the operator's and are followed.
    """
    try:
        clean = relative_name(name)
    except PathEscapeError as exc:
        raise BundleError(path, f"{what} leaves the bundle: {exc.problem}") from exc
    if not clean:
        raise BundleError(path, f"{what} names the bundle folder itself, not a file")
    return clean
