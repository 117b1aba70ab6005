"""Requests in, answers out: tokenizer + engine + task head for one bundle.

Theory of operation. The server never touches tensors. For each request it
calls :meth:`Pipeline.prepare`, which validates the JSON body, tokenises it
and returns a :class:`Job` holding one :class:`Encoding` per input. The
server's batcher may merge the encodings of several jobs into one
:meth:`Pipeline.execute` call (dynamic batching); ``execute`` sorts them by
length, pads each group only to its own longest member (length buckets) and
runs the engine. Each job then turns its slice of the outputs into the JSON
answer with :meth:`Job.finish`.

Request and response JSON follow Hugging Face text-embeddings-inference
(TEI) where the routes overlap (``/predict``, ``/embed``); ``/tokens`` returns
what transformers' token-classification pipeline returns.

Runtime module: standard library and numpy only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from zerostart.errors import EngineError, InputError
from zerostart.model.bundle import Bundle
from zerostart.model.manifest import Manifest
from zerostart.tasks import aggregate_entities, classify, normalize, pool
from zerostart.tokenize import Encoding, WordPieceTokenizer

ROUTE_FOR_TASK = {
    "sequence-classification": "predict",
    "token-classification": "tokens",
    "embeddings": "embed",
}
DEFAULT_MAX_CLIENT_BATCH_SIZE = 32  # inputs per request, TEI's --max-client-batch-size default
DEFAULT_MAX_BATCH_SEQUENCES = 32  # sequences per engine call; bigger batches gain little on CPU
MAX_INPUT_CHARS_PER_TOKEN = 64  # reject absurdly long texts before tokenising them
AGGREGATIONS = ("none", "simple", "first", "average", "max")

Text = str | tuple[str, str]


class Engine(Protocol):
    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray | None = None,
    ) -> np.ndarray: ...


@dataclass
class Job:
    """One request, tokenised: the batcher runs ``encodings``; ``finish`` builds the answer."""

    encodings: list[Encoding]
    _finish: Callable[[list[np.ndarray]], Any]

    def finish(self, outputs: list[np.ndarray]) -> Any:
        return self._finish(outputs)


def _bad(message: str, status: int = 422) -> InputError:
    return InputError(message, status=status, error_type="Validation")


def _bool_field(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise _bad(f"`{name}` must be true or false, got {type(value).__name__}")
    return value


class Pipeline:
    """Everything one worker needs to answer requests for one bundle."""

    def __init__(
        self,
        bundle: Bundle,
        tokenizer: WordPieceTokenizer,
        engine: Engine,
        *,
        phases: dict[str, float] | None = None,
        max_client_batch_size: int = DEFAULT_MAX_CLIENT_BATCH_SIZE,
        max_batch_sequences: int = DEFAULT_MAX_BATCH_SEQUENCES,
    ) -> None:
        self.bundle = bundle
        self.manifest: Manifest = bundle.manifest
        self.tokenizer = tokenizer
        self.engine = engine
        self.phases: dict[str, float] = dict(phases or {})
        self.max_client_batch_size = max_client_batch_size
        self.max_batch_sequences = max_batch_sequences
        self.routes = frozenset({ROUTE_FOR_TASK[self.manifest.task]})
        self._max_chars = self.manifest.max_length * MAX_INPUT_CHARS_PER_TOKEN

    # -- loading -------------------------------------------------------------
    @classmethod
    def load(
        cls,
        bundle_dir: str | os.PathLike[str],
        *,
        verify: str = "fast",
        max_client_batch_size: int = DEFAULT_MAX_CLIENT_BATCH_SIZE,
    ) -> Pipeline:
        """Map the bundle, build the tokenizer and engine; each step is timed in ``phases``."""
        phases: dict[str, float] = {}
        t0 = time.perf_counter()
        bundle = Bundle.open(os.fspath(bundle_dir), verify=verify)
        t1 = time.perf_counter()
        phases["bundle_map"] = t1 - t0
        tokenizer = WordPieceTokenizer.from_files(bundle.vocab_path, bundle.manifest.tokenizer)
        t2 = time.perf_counter()
        phases["tokenizer"] = t2 - t1
        engine = _make_engine(bundle)
        phases["engine"] = time.perf_counter() - t2
        return cls(
            bundle,
            tokenizer,
            engine,
            phases=phases,
            max_client_batch_size=max_client_batch_size,
        )

    def warmup(self) -> None:
        """Run one tiny batch so the first real request pays no first-call costs.

        Timed by the caller (the server's start-up record), not here.
        """
        self.execute([self.tokenizer.encode("warm up", max_length=self.manifest.max_length)])

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "model_id": str(m.source.get("name", self.bundle.path)),
            "model_type": {
                "sequence-classification": "classifier",
                "token-classification": "token_classifier",
                "embeddings": "embedding",
            }[m.task],
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
        """Validate one request body and tokenise it; raises InputError with a 4xx status."""
        if route not in self.routes:
            served = ", ".join(f"/{r}" for r in sorted(self.routes))
            raise InputError(
                f"this model ({self.manifest.task}) does not serve /{route}; it serves {served}",
                status=400,
                error_type="Validation",
            )
        if not isinstance(body, dict):
            raise _bad('the request body must be a JSON object such as {"inputs": "some text"}')
        if "inputs" not in body:
            raise _bad("missing field `inputs`")
        truncate = _bool_field(body, "truncate", False)
        if route == "predict":
            texts, single = self._parse_predict_inputs(body["inputs"])
            raw_scores = _bool_field(body, "raw_scores", False)
            encodings = self._encode(texts, truncate)
            return Job(encodings, lambda outs: self._finish_predict(outs, single, raw_scores))
        strings, single = self._parse_string_inputs(body["inputs"])
        if route == "embed":
            norm = _bool_field(body, "normalize", True)
            encodings = self._encode(strings, truncate)
            return Job(encodings, lambda outs: self._finish_embed(outs, norm))
        strategy = body.get("aggregation_strategy", "simple")
        if strategy not in AGGREGATIONS:
            raise _bad(f"`aggregation_strategy` must be one of {', '.join(AGGREGATIONS)}")
        ignore = body.get("ignore_labels", ["O"])
        if not (isinstance(ignore, list) and all(isinstance(x, str) for x in ignore)):
            raise _bad("`ignore_labels` must be a list of label names")
        encodings = self._encode(strings, truncate)
        return Job(
            encodings,
            lambda outs: self._finish_tokens(outs, strings, encodings, single, strategy, ignore),
        )

    def execute(self, encodings: Sequence[Encoding]) -> list[np.ndarray]:
        """Run the engine over any encodings, shortest first, each group padded to its own longest.

        Returns one array per encoding in the order given: logits [labels] for
        sequence classification, logits [tokens, labels] for token
        classification, the pooled (not yet normalised) vector for embeddings.
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
            if task == "embeddings":
                mode = self.manifest.pooling.mode
                if mode == "mean" and getattr(self.engine, "kernels", None) is not None:
                    result = self.engine.mean_pool(result, mask)  # type: ignore[attr-defined]
                else:
                    result = pool(result, mask, mode)
            for row, i in enumerate(group):
                if task == "token-classification":
                    out[i] = result[row, : len(encodings[i].ids)]
                else:
                    out[i] = result[row]
        return [o for o in out if o is not None]

    # -- parsing -------------------------------------------------------------
    def _check_count(self, n: int) -> None:
        if n == 0:
            raise _bad("`inputs` must not be empty")
        if n > self.max_client_batch_size:
            raise _bad(
                f"batch size {n} is over this server's limit of {self.max_client_batch_size} "
                "inputs per request; split the batch",
                status=413,
            )

    def _check_text(self, text: Any, where: str) -> str:
        if not isinstance(text, str):
            raise _bad(f"{where} must be a string, got {type(text).__name__}")
        if not text:
            raise _bad(f"{where} is an empty string")
        if len(text) > self._max_chars:
            raise _bad(
                f"{where} has {len(text)} characters, over the limit of {self._max_chars}",
                status=413,
            )
        return text

    def _parse_predict_inputs(self, inputs: Any) -> tuple[list[Text], bool]:
        """TEI's rules: "a" is one text, ["a", "b"] one pair, [["a"], ["a", "b"]] a batch."""
        if isinstance(inputs, str):
            return [self._check_text(inputs, "`inputs`")], True
        if not isinstance(inputs, list):
            raise _bad(
                "`inputs` must be a string, a pair [string, string] or a batch "
                "[[string], [string, string], ...]"
            )
        if inputs and all(isinstance(x, str) for x in inputs):
            if len(inputs) > 2:
                raise _bad(
                    "a list of strings is read as one text pair and can hold at most 2; "
                    'for a batch send [["text 1"], ["text 2"], ...]'
                )
            if len(inputs) == 1:
                return [self._check_text(inputs[0], "`inputs[0]`")], True
            a = self._check_text(inputs[0], "`inputs[0]`")
            b = self._check_text(inputs[1], "`inputs[1]`")
            return [(a, b)], True
        self._check_count(len(inputs))
        texts: list[Text] = []
        for i, item in enumerate(inputs):
            if not isinstance(item, list) or len(item) not in (1, 2):
                raise _bad(
                    f"`inputs[{i}]` must be [text] or [text, text_pair] in a batch, got {item!r:.60}"
                )
            parts = [self._check_text(x, f"`inputs[{i}][{j}]`") for j, x in enumerate(item)]
            texts.append(parts[0] if len(parts) == 1 else (parts[0], parts[1]))
        return texts, False

    def _parse_string_inputs(self, inputs: Any) -> tuple[list[str], bool]:
        if isinstance(inputs, str):
            return [self._check_text(inputs, "`inputs`")], True
        if not isinstance(inputs, list):
            raise _bad("`inputs` must be a string or a list of strings")
        self._check_count(len(inputs))
        return [self._check_text(x, f"`inputs[{i}]`") for i, x in enumerate(inputs)], False

    def _encode(self, texts: Sequence[Text], truncate: bool) -> list[Encoding]:
        limit = self.manifest.max_length
        encodings = self.tokenizer.encode_batch(texts, max_length=limit)
        if not truncate:
            for i, enc in enumerate(encodings):
                if enc.truncated:
                    raise _bad(
                        f"input {i} has {enc.untruncated_length} tokens, over this model's "
                        f'limit of {limit}; shorten it or send "truncate": true',
                        status=413,
                    )
        return encodings

    # -- answers ---------------------------------------------------------------
    def _finish_predict(self, outputs: list[np.ndarray], single: bool, raw: bool) -> Any:
        m = self.manifest
        rows = [classify(o, m.labels, m.problem_type, raw_scores=raw) for o in outputs]
        return rows[0] if single else rows

    def _finish_embed(self, outputs: list[np.ndarray], norm: bool) -> Any:
        stacked = np.stack(outputs)
        if norm:
            stacked = normalize(stacked)
        return stacked.astype(np.float32).tolist()

    def _finish_tokens(
        self,
        outputs: list[np.ndarray],
        texts: list[str],
        encodings: list[Encoding],
        single: bool,
        strategy: str,
        ignore: list[str],
    ) -> Any:
        rows = [
            aggregate_entities(
                text=text,
                tokens=enc.tokens,
                ids=enc.ids,
                offsets=enc.offsets,
                special_tokens_mask=enc.special_tokens_mask,
                logits=logits,
                labels=self.manifest.labels,
                strategy=strategy,
                ignore_labels=ignore,
                tokens_to_string=self.tokenizer.convert_tokens_to_string,
                unk_token=self.manifest.tokenizer.unk_token,
            )
            for text, enc, logits in zip(texts, encodings, outputs, strict=True)
        ]
        return rows[0] if single else rows


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
