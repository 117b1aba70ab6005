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

Runtime module: standard library and numpy only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from zerostart import api
from zerostart.api import Job
from zerostart.errors import EngineError
from zerostart.limits import Limits
from zerostart.model.bundle import Bundle
from zerostart.model.manifest import Manifest
from zerostart.tokenize import Encoding, WordPieceTokenizer, load_tokenizer

if TYPE_CHECKING:  # loaded by load_tokenizer only for bundles that use it
    from zerostart.tokenize import Tokenizer

DEFAULT_MAX_CLIENT_BATCH_SIZE = Limits.max_client_batch_size  # zerostart.limits: TEI's default
DEFAULT_MAX_BATCH_SEQUENCES = Limits.max_batch_sequences


class Engine(Protocol):
    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray | None = None,
    ) -> np.ndarray: ...


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
        tokenizer = load_tokenizer(bundle.path, bundle.manifest.tokenizer)
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
        """Run one tiny batch so the first real request pays no first-call costs.

        Timed by the caller (the server's start-up record), not here.
        """
        self.execute([self.tokenizer.encode("warm up", max_length=self.manifest.max_length)])

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
            "cpu_kernel_build": getattr(getattr(self.engine, "kernels", None), "arch", None),
        }

    # -- requests ------------------------------------------------------------
    def prepare(self, route: str, body: Any) -> Job:
        """Validate one request body for ``route`` and tokenise it (``zerostart.api``).

        Raises InputError carrying TEI's status and error class, TokenizerError
        for a token id outside the vocabulary.
        """
        return api.prepare(self, route, body)

    def execute(self, encodings: Sequence[Encoding]) -> list[np.ndarray]:
        """Run the engine over any encodings, shortest first, each group padded to its own longest.

        Returns one array per encoding in the order given: logits [labels] for
        sequence classification, logits [tokens, labels] for token
        classification, the final hidden states [tokens, hidden] for embeddings
        (each route pools them as it needs: ``/embed`` a vector, ``/embed_all``
        every token). Rows are views into the batch's output array.
        """
        out: list[np.ndarray | None] = [None] * len(encodings)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        step = self.max_batch_sequences
        task = self.manifest.task
        pad_id = self.tokenizer.pad_id
        for start in range(0, len(order), step):
            group = order[start : start + step]
            width = max(len(encodings[i].ids) for i in group)
            ids = np.full((len(group), width), pad_id, dtype=np.int64)
            types = np.zeros((len(group), width), dtype=np.int64)
            mask = np.zeros((len(group), width), dtype=np.int64)
            for row, i in enumerate(group):
                enc = encodings[i]
                n = len(enc.ids)
                ids[row, :n] = enc.ids
                types[row, :n] = enc.type_ids
                mask[row, :n] = 1
            result = self.engine.forward(ids, mask, types)
            self.engine_calls += 1
            for row, i in enumerate(group):
                if task != "sequence-classification":
                    out[i] = result[row, : len(encodings[i].ids)]
                else:
                    out[i] = result[row]
        return [o for o in out if o is not None]


def _make_engine(bundle: Bundle) -> Engine:
    device = bundle.manifest.device
    if device == "cpu":
        from zerostart.engine.cpu import CpuEngine

        return CpuEngine.from_bundle(bundle)
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
