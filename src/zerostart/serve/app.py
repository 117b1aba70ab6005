"""Routes: turn a parsed HTTP request into a response.

Inference routes follow Hugging Face text-embeddings-inference (TEI): the same
request and response JSON (built by ``zerostart.api`` through the pipeline),
the same error body ``{"error": ..., "error_type": ...}`` and status codes
(TEI's ``ErrorType`` -> status map): 400 ``Empty``, 422 ``Validation`` /
``Tokenizer``, 424 ``Backend`` (the model cannot answer, or produced NaN or
infinity), 429 ``Overloaded``, 503 ``Unhealthy``; 413 a body over the limit.
The OpenAI routes answer errors as TEI's do there:
``{"message": ..., "code": status, "type": error_type}``.

Runtime module: standard library only (the pipeline brings numpy).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any, Protocol

import zerostart
from zerostart.errors import EngineError, InputError, TokenizerError, ZerostartError
from zerostart.paths import redact_paths
from zerostart.serve.batcher import Batcher, BatchFailed, Overloaded, Stopped
from zerostart.serve.config import ServerConfig
from zerostart.serve.http import (
    Request,
    Response,
    authorized,
    error_response,
    json_response,
    unauthorized,
)
from zerostart.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from zerostart.serve.metrics import Metrics
from zerostart.serve.startup import Startup
from zerostart.snapshot.marker import restore_info, start_ticks

log = logging.getLogger("zerostart.serve")

# The POST routes: every one zerostart.api knows (``api.ROUTES``: "" is POST /,
# "invocations" SageMaker's; ``App.inference_routes``), of which a model serves its
# pipeline's ``routes``, and TEI's /embed_sparse (SPLADE models), answered 424 Backend, not
# 404: no bundle has SPLADE pooling, so no pipeline serves it.
UNSERVED_TEI_ROUTES = ("embed_sparse",)
OPENAI_ROUTES = ("v1/embeddings", "embeddings")
# GET / and /ping are TEI's (and SageMaker's) health routes.
GET_ROUTES = ("health", "info", "metrics", "", "ping", "v1/models")


class Job(Protocol):
    encodings: list[Any]

    def finish(self, outputs: list[Any]) -> Any: ...


class PipelineLike(Protocol):
    """The part of ``zerostart.pipeline.Pipeline`` the server uses."""

    routes: frozenset[str]
    max_client_batch_size: int

    def prepare(self, route: str, body: Any) -> Job: ...
    def execute(self, encodings: list[Any]) -> list[Any]: ...
    def info(self) -> dict[str, Any]: ...


def openai_error(response: Response) -> Response:
    """TEI's error body on its OpenAI route: ``{"message", "code", "type"}``."""
    data = json.loads(response.body)
    body = {"message": data["error"], "code": response.status, "type": data["error_type"]}
    return Response(
        response.status, json.dumps(body).encode(), headers=response.headers, close=response.close
    )


class App:
    """Dispatches requests; owns no I/O (the connection does the writing)."""

    def __init__(
        self,
        pipeline: PipelineLike,
        config: ServerConfig,
        batcher: Batcher,
        metrics: Metrics,
        startup: Startup,
    ) -> None:
        self.pipeline = pipeline
        self.config = config
        self.batcher = batcher
        self.metrics = metrics
        self.startup = startup
        self.ready = False  # set once listening; false again when shutdown begins
        self.in_flight = 0  # inference requests between parse and response
        # zerostart.api names the routes. Imported here, not at the top: the pipeline has
        # imported it already, and the entry point imports no more than its pin
        # (tests/unit/test_serve_imports.py: no tokenizer, ctypes or unicodedata).
        from zerostart.api import DISPATCH_ROUTES, ROUTES

        self.inference_routes = frozenset((*ROUTES, *UNSERVED_TEI_ROUTES))
        self._dispatch_routes = DISPATCH_ROUTES
        self._info_static = self._static_info()
        self._boot_ticks = start_ticks()  # changes if CRIU restores this process (snapshot.marker)

    async def handle(self, request: Request) -> Response:
        route = request.path.strip("/")
        label = route if route in self.inference_routes or route in GET_ROUTES else "other"
        label = label or "root"
        try:
            response = await self._dispatch(request, route)
        except asyncio.CancelledError:  # the client went away (nginx's 499)
            self.metrics.record_request(label, 499, time.perf_counter() - request.received_at)
            raise
        except Exception as exc:  # a bug: answer 500 and log it; the server keeps serving
            log.error("unexpected error on %s %s", request.method, request.path, exc_info=exc)
            response = error_response(500, redact_paths(f"internal error: {exc!r}"), "Backend")
        if route in OPENAI_ROUTES and response.status >= 400:
            response = openai_error(response)
        self.metrics.record_request(
            label, response.status, time.perf_counter() - request.received_at
        )
        return response

    async def _dispatch(self, request: Request, route: str) -> Response:
        method = request.method
        if route not in ("health", "ping") and not authorized(request, self.config.api_key):
            return unauthorized("this worker")
        allowed = [
            m
            for m, table in (("GET", GET_ROUTES), ("POST", self.inference_routes))
            if route in table
        ]
        if not allowed:
            return error_response(
                404,
                f"no route {request.path!r}; this model serves POST "
                + " ".join(f"/{r}" for r in sorted(self.pipeline.routes))
                + " and /, GET /health /info /metrics /v1/models",
                "NotFound",
            )
        if method not in allowed:
            return _method_not_allowed(", ".join(allowed), route)
        if method == "POST":
            return await self._infer(route, request.body)
        if route in ("health", "", "ping"):
            return self._health()
        if route == "info":
            return json_response(self.info())
        if route == "v1/models":
            return json_response(self._models())
        return Response(200, self.metrics.render(), content_type=METRICS_CONTENT_TYPE)

    def _health(self) -> Response:
        if self.ready:
            return json_response({"status": "ready"})
        state = "shutting down" if self.startup.phases.get("listening") else "starting"
        return error_response(
            503, f"worker is {state}", "Unhealthy", headers=[("retry-after", "1")]
        )

    async def _infer(self, route: str, raw: bytes) -> Response:
        if route not in self.pipeline.routes and route not in self._dispatch_routes:
            # TEI answers a route its model cannot serve with 424 Backend.
            served = ", ".join(f"/{r}" for r in sorted(self.pipeline.routes))
            task = self._info_static.get("task", "this task")
            return error_response(
                424, f"this model ({task}) does not serve /{route}; it serves {served}", "Backend"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return error_response(400, f"request body is not valid UTF-8: {exc}", "Validation")
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            return error_response(400, f"request body is not valid JSON: {exc}", "Validation")
        except RecursionError:
            return error_response(400, "request body is nested too deeply", "Validation")
        except ValueError:  # an integer longer than Python's int_max_str_digits (4300)
            digits = sys.get_int_max_str_digits()
            return error_response(
                400, f"request body holds an integer of more than {digits} digits", "Validation"
            )
        self.in_flight += 1
        try:
            job = self.pipeline.prepare(route, body)
            outputs = await self.batcher.submit(job.encodings)
            answer = job.finish(outputs)
            try:
                return json_response(answer)
            except ValueError:  # NaN or infinity that the route's own checks let through
                log.error("answer on /%s holds a non-finite number", route)
                return error_response(
                    424, "the model produced a non-finite number (NaN or infinity)", "Backend"
                )
        except InputError as exc:
            return error_response(exc.status, str(exc), exc.error_type)
        except TokenizerError as exc:
            return error_response(422, str(exc), "Tokenizer")
        except Overloaded as exc:
            return error_response(429, str(exc), "Overloaded", headers=[("retry-after", "1")])
        except Stopped as exc:
            return error_response(503, str(exc), "Unhealthy")
        except (BatchFailed, EngineError) as exc:
            return error_response(424, str(exc), "Backend")
        except ZerostartError as exc:
            log.error("request failed on /%s: %s", route, exc)  # paths in the log only
            return error_response(500, redact_paths(str(exc)), "Backend")
        finally:
            self.in_flight -= 1

    # -- /info -------------------------------------------------------------------
    def _static_info(self) -> dict[str, Any]:
        cfg = self.config
        facts = {
            # TEI's router fields
            "auto_truncate": cfg.auto_truncate,
            "tokenization_workers": 1,  # the event loop tokenises
            "sha": None,
            "docker_label": None,
            "version": zerostart.__version__,
            "routes": sorted(self.pipeline.routes),
            "max_client_batch_size": self.pipeline.max_client_batch_size,
            "max_batch_requests": cfg.max_batch_size,  # TEI's name for sequences per batch
            "max_batch_tokens": cfg.max_batch_tokens,
            "max_concurrent_requests": cfg.max_queue,
            "limits": cfg.public(),
        }
        return {**self.pipeline.info(), **facts}

    def _models(self) -> dict[str, Any]:
        """OpenAI's ``GET /v1/models``: the one model this worker serves."""
        model = {"id": self._info_static.get("model_id"), "object": "model", "created": 0}
        return {"object": "list", "data": [{**model, "owned_by": "zerostart"}]}

    def info(self) -> dict[str, Any]:
        start = self.startup.as_dict()
        restored = restore_info(self._boot_ticks)
        if restored is not None:
            # Restored from a snapshot: the boot phases happened once, before the freeze.
            start = {
                **start,
                "mode": "restore",
                "boot_phases": start["phases"],
                "restore": restored,
            }
            if isinstance(restored.get("phases"), dict):
                start["phases"] = restored["phases"]
        return {**self._info_static, "start": start}


def _method_not_allowed(allowed: str, route: str) -> Response:
    return error_response(
        405, f"/{route} accepts {allowed} only", "MethodNotAllowed", headers=[("allow", allowed)]
    )
