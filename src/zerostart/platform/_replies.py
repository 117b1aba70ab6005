"""What the gateway answers besides a replica's own answer: errors, timing headers.

Auth (``authorized``, ``unauthorized``) and ``json_response`` are the worker's own
(``serve/http.py``): one bearer check and one JSON answer for worker and gateway.

Every error names the model (or the gateway) and uses TEI's body,
``{"error": ..., "error_type": ...}`` (``serve/http.py``'s ``error_response``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from zerostart.platform._core import Reply
from zerostart.platform._state import StartRecord
from zerostart.platform.upstream import BodyStream
from zerostart.serve.http import Response, error_response

FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "accept-encoding")
FORWARDED_RESPONSE_HEADERS = ("retry-after", "content-encoding")
COLD_HEADER = "zerostart-cold-start"


class Refused(Exception):
    """Raised on the way to a replica: answer ``response`` instead."""

    def __init__(self, response: Response) -> None:
        self.response = response


def reply_response(reply: Reply) -> Response:
    """The core's :class:`~zerostart.platform._core.Reply` as an HTTP answer."""
    headers = []
    if reply.retry_after_s is not None:
        headers.append(("retry-after", str(max(1, round(reply.retry_after_s)))))
    return error_response(reply.status, reply.message, reply.error_type, headers=headers)


def timing_headers(waited_s: float, cold: StartRecord | None) -> list[tuple[str, str]]:
    """``zerostart-cold-start`` and a W3C ``server-timing`` with the wait and the start's phases."""
    wait_ms = waited_s * 1e3
    timing = [f"queue;dur={wait_ms:.3f}"]
    if cold is None:
        return [(COLD_HEADER, "none"), ("server-timing", ", ".join(timing))]
    timing.append(f'start;desc="{cold.path}";dur={cold.total_ms:.3f}')
    timing += [f"{k};dur={v:.3f}" for k, v in cold.phases_ms.items()]
    return [
        (COLD_HEADER, f"{cold.path};wait_ms={wait_ms:.3f};start_ms={cold.total_ms:.3f}"),
        ("server-timing", ", ".join(timing)),
    ]


class Relay:
    """A replica's streamed body on its way to the client; ``on_close`` frees its seat."""

    def __init__(self, inner: BodyStream, on_close: Callable[[], None]) -> None:
        self.inner = inner
        self.length = inner.length
        self._on_close: Callable[[], None] | None = on_close

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.inner.__aiter__()

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()
