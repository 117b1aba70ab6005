"""The worker's HTTP inference server (``python -m zerostart.serve BUNDLE``).

Public API: :class:`ServerConfig`, :class:`Server` and :func:`run`. They are
loaded on first use so that ``python -m zerostart.serve`` reaches its first line
(where start-up timing begins) without importing anything else first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zerostart.serve.config import ServerConfig
    from zerostart.serve.server import Server, run

__all__ = ["Server", "ServerConfig", "run"]


def __getattr__(name: str) -> Any:
    if name == "ServerConfig":
        from zerostart.serve.config import ServerConfig

        return ServerConfig
    if name in ("Server", "run"):
        from zerostart.serve import server

        return getattr(server, name)
    raise AttributeError(f"module 'zerostart.serve' has no attribute {name!r}")
