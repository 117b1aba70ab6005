"""The drain's last step: a listening socket that lets no new connection complete.

``refuse_new_connections`` puts a drop-everything socket filter on the listening
socket before the draining server's last ``accept()``. Without it, a handshake
completing between that accept and the close was reset after the client had sent
its request (tests/integration/test_drain.py saw 5 of 600 in one CI round). These
tests use real sockets on loopback: a connection completed before the filter is
still accepted and carries data both ways; one attempted after it never completes.
"""

from __future__ import annotations

import socket
import sys

import pytest

from zerostart.serve.http import refuse_new_connections

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="socket filters are Linux's"
)


def test_no_connection_completes_once_the_filter_is_on() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    port = listener.getsockname()[1]
    before = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        assert refuse_new_connections(listener)
        late = socket.socket()
        late.settimeout(0.5)
        with pytest.raises(TimeoutError):  # the SYN is dropped: no SYN-ACK comes back
            late.connect(("127.0.0.1", port))
        late.close()
        # the connection completed before the filter is in the accept queue, and works
        listener.settimeout(5)
        accepted, _ = listener.accept()
        before.sendall(b"ping")
        accepted.settimeout(5)
        assert accepted.recv(4) == b"ping"
        accepted.sendall(b"pong")
        assert before.recv(4) == b"pong"
        accepted.close()
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing else reached the queue
            listener.accept()
    finally:
        before.close()
        listener.close()
