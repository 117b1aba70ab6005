"""The slot control protocol's own logic: framing, limits, who may connect (no slot process)."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from zerostart.errors import ServeError
from zerostart.serve.slot import (
    MAX_MESSAGE_BYTES,
    LineReader,
    accept_owner,
    bind_control,
    check_private_dir,
    decode,
    encode,
    peer_uid,
)


def test_messages_round_trip_as_single_lines() -> None:
    message = {"type": "assign", "bundle": "/b/minilm", "server": {"port": 0, "text": "a\nb"}}
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # JSON escapes the newline
    assert decode(line[:-1]) == message


@pytest.mark.parametrize(
    "line", [b"not json", b"[1, 2]", b'{"kind": "x"}', b'{"type": 3}', b"\xff"]
)
def test_malformed_messages_are_refused(line: bytes) -> None:
    with pytest.raises(ServeError, match="control message"):
        decode(line)


def test_reader_splits_lines_and_bounds_what_it_buffers() -> None:
    a, b = socket.socketpair()
    with a, b:
        reader = LineReader(b)
        a.sendall(encode({"type": "x"}) + encode({"type": "y"})[:5])
        assert reader.read() == {"type": "x"}
        a.sendall(encode({"type": "y"})[5:])
        assert reader.read() == {"type": "y"}
        a.shutdown(socket.SHUT_WR)
        assert reader.read() is None  # EOF
    a, b = socket.socketpair()
    with a, b:
        threading.Thread(target=a.sendall, args=(b"x" * (MAX_MESSAGE_BYTES + 70_000),)).start()
        with pytest.raises(ServeError, match="over"):
            LineReader(b).read()


def test_peer_uid_comes_from_the_kernel() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_uid(a) == os.getuid() == peer_uid(b)


def test_control_socket_is_0600_and_needs_a_private_folder(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o755)
    with pytest.raises(ServeError, match="another user could reach the socket"):
        check_private_dir(str(open_dir / "s.sock"))
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    path = str(private / "s.sock")
    listener = bind_control(path)
    with listener:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        conn = accept_owner(listener, path, timeout_s=5)
        with client, conn:
            conn.sendall(b"ok\n")
            assert client.recv(3) == b"ok\n"
    idle = bind_control(str(private / "t.sock"))
    with idle, pytest.raises(ServeError, match="nobody connected"):
        accept_owner(idle, "t.sock", timeout_s=0.05)
