"""Requests in, answers out: tokenizer + engine + task head for one bundle.

Theory of operation. The server never touches tensors. For each request it
calls :meth:`Pipeline.prepare`, which validates the JSON body, tokenises it
and returns a :class:`Job` holding one :class:`Encoding` per input. The
server's batcher may merge the encodings of several jobs into one
:meth:`Pipeline.execute` call (dynamic batching); ``execute`` sorts them by
length, pads each group only to its own longest member (length buckets) and
runs the engine. Each job then turns its slice of the outputs into the JSON
answer with :meth:`Job.finish`.

The JSON of each route (TEI's, OpenAI's, ours) lives in ``zerostart.api``.

No numpy on this path (docs/cpu.md): token ids go to the engine as ``array``
buffers and each encoding's output comes back as a float32 ``memoryview``
into the batch's output buffer (shape ``[labels]``, ``[tokens, labels]`` or
``[tokens, hidden]``; ``numpy.asarray`` reads it without a copy). CPU bundles
with native kernels run ``NativeCpuEngine``, GPU bundles ``CudaEngine.run``
(both numpy-free); the numpy reference engine (CPU bundles converted with
``--cpu-arch none``) runs behind :class:`NumpyEngine`, which imports numpy.

Runtime module: standard library only.
"""

from __future__ import annotations

import os
import time
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from zerostart import api
from zerostart.api import Job
from zerostart.bundle.folder import Bundle
from zerostart.bundle.manifest import TOKENIZER_TABLES_NAME, Manifest
from zerostart.engine.native import NativeKernels
from zerostart.errors import EngineError
from zerostart.limits import Limits
from zerostart.tasks.heads import Heads
from zerostart.tokenize import Encoding, WordPieceTokenizer, load_tokenizer

if TYPE_CHECKING:
    import numpy as np

    from zerostart.tokenize import (
        Tokenizer,  # loaded by load_tokenizer only for bundles that use it
    )

DEFAULT_MAX_CLIENT_BATCH_SIZE = Limits().max_client_batch_size  # zerostart.limits: TEI's default
DEFAULT_MAX_BATCH_SEQUENCES = Limits().max_batch_sequences


class Engine(Protocol):
    """What ``execute`` runs: ``NativeCpuEngine.run``'s contract."""

    def run(
        self, ids: Sequence[int], types: Sequence[int] | None, lengths: Sequence[int], width: int
    ) -> array[float]: ...


class ArrayEngine(Protocol):
    """The numpy engines' contract (``CpuEngine``, ``CudaEngine``)."""

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray | None = None,
    ) -> np.ndarray: ...


class NumpyEngine:
    """An engine that takes and returns numpy arrays, behind ``Engine.run``.

    For the numpy reference engine and the GPU engine; imports numpy.
    """

    def __init__(self, engine: ArrayEngine) -> None:
        self.engine = engine
        self.kernels = getattr(engine, "kernels", None)

    def run(
        self, ids: Sequence[int], types: Sequence[int] | None, lengths: Sequence[int], width: int
    ) -> array[float]:
        import numpy as np

        b = len(lengths)
        ids_np = np.asarray(ids, dtype=np.int64).reshape(b, width)
        types_np = None if types is None else np.asarray(types, dtype=np.int64).reshape(b, width)
        mask = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
        result = self.engine.forward(ids_np, mask, types_np)
        out = array("f")
        out.frombytes(np.ascontiguousarray(result, dtype=np.float32).tobytes())
        return out

    def __getattr__(self, name: str) -> Any:  # close(), warm_graphs(), startup_phases ...
        return getattr(self.engine, name)


class Pipeline:
    """Everything one worker needs to answer requests for one bundle."""

    def __init__(
        self,
        bundle: Bundle,
        tokenizer: WordPieceTokenizer | Tokenizer,
        engine: Engine,
        *,
        phases: dict[str, float] | None = None,
        limits: Limits | None = None,
        auto_truncate: bool = True,
    ) -> None:
        self.bundle = bundle
        self.manifest: Manifest = bundle.manifest
        self.tokenizer = tokenizer
        self.engine = engine
        self.phases: dict[str, float] = dict(phases or {})
        self.limits = limits or Limits()  # the server's (ServerConfig.limits)
        self.max_client_batch_size = self.limits.max_client_batch_size  # read by zerostart.api
        self.max_batch_sequences = self.limits.max_batch_sequences
        self.engine_calls = 0  # engine.forward calls so far (the worker's /metrics)
        # truncate over-long inputs when a request does not say (TEI's --auto-truncate)
        self.auto_truncate = auto_truncate
        self.routes = api.routes_for(self.manifest)
        # Pooling, normalisation, scores: on the bundle's native CPU kernels when it has
        # them; plain Python otherwise (the numpy reference engine, a GPU worker).
        kernels = getattr(engine, "kernels", None)
        self.heads = Heads(kernels if isinstance(kernels, NativeKernels) else None)

    # -- loading -------------------------------------------------------------
    @classmethod
    def load(
        cls,
        bundle_dir: str | os.PathLike[str],
        *,
        verify: str = "fast",
        max_client_batch_size: int | None = None,
        limits: Limits | None = None,
        auto_truncate: bool = True,
    ) -> Pipeline:
        """Map the bundle, build the tokenizer and engine; each step is timed in ``phases``.

        ``limits``: the server's (``ServerConfig.limits``); ``max_client_batch_size``
        alone changes just that field of the defaults.
        """
        limits = limits or Limits()
        if max_client_batch_size is not None:
            limits = limits.new(max_client_batch_size=max_client_batch_size)
        phases: dict[str, float] = {}
        t0 = time.perf_counter()
        bundle = Bundle.open(os.fspath(bundle_dir), verify=verify)
        t1 = time.perf_counter()
        phases["bundle_map"] = t1 - t0
        tokenizer = load_tokenizer(
            bundle.path,
            bundle.manifest.tokenizer,
            tables=TOKENIZER_TABLES_NAME in bundle.manifest.files,
        )
        t2 = time.perf_counter()
        phases["tokenizer"] = t2 - t1
        engine = _make_engine(bundle)
        phases["engine"] = time.perf_counter() - t2
        return cls(
            bundle,
            tokenizer,
            engine,
            phases=phases,
            limits=limits,
            auto_truncate=auto_truncate,
        )

    def warmup(self) -> None:
        """Pay the first request's one-time costs now; timed by the caller (``/info``'s phases).

        The tokenizer encodes once. An engine that can map its weights without computing
        (``NativeCpuEngine.prefault``: ``madvise(MADV_POPULATE_READ)`` over the layers)
        does that instead of a forward pass: measured on MiniLM SST-2 (2-core AMD EPYC,
        one BLAS thread, CPU time of 4 interleaved starts) ~3.3 ms against ~12 ms for a
        warm-up forward, with the first request as fast after either (docs/cpu.md). The
        GPU engine runs one tiny batch (its first bucket's graph is captured there).
        """
        warm = self.tokenizer.encode("warm up", max_length=self.manifest.max_length)
        prefault = getattr(self.engine, "prefault", None)
        if prefault is not None:
            prefault()
            return
        self.execute([warm])

    @property
    def model_id(self) -> str:
        """The name clients see (``/info``, OpenAI's ``model``).

        The name ``zerostart convert`` recorded in the manifest (``--name``,
        default the bundle folder's name at convert time), so the same bundle
        answers the same id on a developer's machine and inside an image (where
        the bundle folder is ``/model``); bundles converted before the name was
        recorded answer their folder's name.
        """
        return str(self.manifest.source.get("name") or self.bundle.path.name)

    def info(self) -> dict[str, Any]:
        """TEI's ``/info`` model fields (``model_id``, ``model_dtype``, ``model_type``) plus ours."""
        m = self.manifest
        labels = {
            "id2label": {str(i): label for i, label in enumerate(m.labels)},
            "label2id": {label: i for i, label in enumerate(m.labels)},
        }
        if m.task == "sequence-classification":
            model_type: dict[str, Any] = {
                "reranker" if len(m.labels) == 1 else "classifier": labels
            }
        elif m.task == "embeddings":
            model_type = {"embedding": {"pooling": m.pooling.mode}}
        else:
            model_type = {"token_classifier": labels}  # not a TEI kind: TEI has no such model
        return {
            "model_id": self.model_id,
            "model_sha": None,
            "model_dtype": m.dtype,
            "served_model_name": self.model_id,
            "model_type": model_type,
            "task": m.task,
            "architecture": m.architecture,
            "labels": list(m.labels),
            "problem_type": m.problem_type if m.task == "sequence-classification" else None,
            "pooling": m.pooling.mode if m.task == "embeddings" else None,
            "max_input_length": m.max_length,
            "max_client_batch_size": self.max_client_batch_size,
            "max_batch_sequences": self.max_batch_sequences,
            "dtype": m.dtype,
            "device": m.device,
            "routes": sorted(self.routes),
            "hidden_size": m.config.hidden_size,
            "num_layers": m.config.num_layers,
            # CPU: the native kernel build this CPU runs (docs/cpu.md); None: numpy kernels / GPU.
            "cpu_kernel_build": self.heads.kernels.arch if self.heads.kernels else None,
        }

    # -- requests ------------------------------------------------------------
    def prepare(self, route: str, body: Any) -> Job:
        """Validate one request body for ``route`` and tokenise it (``zerostart.api``).

        Raises InputError carrying TEI's status and error class, TokenizerError
        for a token id outside the vocabulary.
        """
        return api.prepare(self, route, body)

    def execute(self, encodings: Sequence[Encoding]) -> list[memoryview[float]]:
        """Run the engine over any encodings, shortest first, each group padded to its own longest.

        Returns one float32 memoryview per encoding in the order given: logits
        [labels] for sequence classification, logits [tokens, labels] for token
        classification, the final hidden states [tokens, hidden] for embeddings
        (each route pools them as it needs: ``/embed`` a vector, ``/embed_all``
        every token). Views into the group's output buffer, which nothing reuses.
        """
        out: list[memoryview[float] | None] = [None] * len(encodings)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        step = self.max_batch_sequences
        per_token = self.manifest.task != "sequence-classification"
        cols = self.manifest.config.hidden_size
        if self.manifest.task != "embeddings":
            cols = len(self.manifest.labels)
        pad_id = self.tokenizer.pad_id
        for start in range(0, len(order), step):
            group = order[start : start + step]
            lengths = [len(encodings[i].ids) for i in group]
            width = max(lengths)
            ids = array("q")
            types = array("q")
            for i, n in zip(group, lengths, strict=True):
                enc = encodings[i]
                ids.extend(enc.ids)
                types.extend(enc.type_ids)
                if n < width:
                    ids.extend([pad_id] * (width - n))
                    types.extend([0] * (width - n))
            flat = memoryview(self.engine.run(ids, types, lengths, width)).cast("B")
            self.engine_calls += 1
            row_bytes = 4 * cols * (width if per_token else 1)
            for row, (i, n) in enumerate(zip(group, lengths, strict=True)):
                part = flat[row * row_bytes : row * row_bytes + 4 * cols * (n if per_token else 1)]
                out[i] = part.cast("f", (n, cols)) if per_token else part.cast("f")
        return [o for o in out if o is not None]


def _make_engine(bundle: Bundle) -> Engine:
    device = bundle.manifest.device
    if device == "cpu" and bundle.manifest.architecture == "modernbert":
        if bundle.manifest.cpu_kernels:
            from zerostart.engine.modernbert_native import ModernBertNativeEngine

            return ModernBertNativeEngine.from_bundle(bundle)
        from zerostart.engine.modernbert_ref import ModernBertReference  # --cpu-arch none

        return NumpyEngine(ModernBertReference.from_bundle(bundle))
    if device == "cpu":
        deberta = bundle.manifest.architecture == "deberta-v2"
        if bundle.manifest.cpu_kernels:
            if deberta:
                from zerostart.engine.deberta_native import NativeDebertaEngine

                return NativeDebertaEngine.from_bundle(bundle)
            from zerostart.engine.cpu_native import NativeCpuEngine

            return NativeCpuEngine.from_bundle(bundle)
        if deberta:  # --cpu-arch none: the numpy reference
            from zerostart.engine.deberta import DebertaEngine

            return NumpyEngine(DebertaEngine.from_bundle(bundle))
        from zerostart.engine.cpu import CpuEngine  # --cpu-arch none: the numpy engine

        return NumpyEngine(CpuEngine.from_bundle(bundle))
    if device == "cuda":
        # Driver-only GPU engine: ctypes to libcuda and kernels compiled at convert time.
        from zerostart.engine.cuda import CudaEngine

        if not (bundle.path / "kernels").is_dir():
            raise EngineError(
                f"{bundle.path}: this GPU bundle holds no compiled kernels",
                hint="convert again with `zerostart convert --device cuda --arch sm_90 ...`",
            )
        return CudaEngine.from_bundle(bundle)
    raise EngineError(f"{bundle.path}: unknown device {device!r} in the manifest")
