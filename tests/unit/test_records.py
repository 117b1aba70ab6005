"""The plain record classes of the worker's import path behave as the dataclasses they replace."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from zerostart.api._parse import Truncation
from zerostart.engine.cpu_tuning import CpuIdentity, GemmPlan
from zerostart.errors import ServeError
from zerostart.limits import Limits
from zerostart.serve.config import ServerConfig
from zerostart.serve.http import Response
from zerostart.tokenize import Encoding

SRC = Path(__file__).resolve().parents[2] / "src"


def test_frozen_records_are_immutable_values() -> None:
    a, b = Limits(max_batch_tokens=100), Limits(max_batch_tokens=100)
    assert a == b and hash(a) == hash(b) and a != Limits() and a != (32, 32, 100)
    with pytest.raises(AttributeError, match="immutable"):
        a.max_batch_tokens = 5  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del a.max_batch_tokens
    assert (
        repr(a) == "Limits(max_batch_sequences=32, max_batch_tokens=100, max_client_batch_size=32)"
    )
    assert {Truncation(True), Truncation(True, left=False)} == {Truncation(True)}
    for record in (a, ServerConfig(port=0, api_key="k"), CpuIdentity("AMD", 25), Truncation(True)):
        assert copy.deepcopy(record) == record == pickle.loads(pickle.dumps(record))


def test_copies_are_checked_again() -> None:
    limits = Limits()
    assert limits.new(max_batch_sequences=8) == Limits(max_batch_sequences=8)
    assert limits == Limits()  # unchanged
    with pytest.raises(ServeError, match="max_batch_sequences must be an integer > 0"):
        limits.new(max_batch_sequences=0)
    with pytest.raises(ServeError, match="limit max_batch_tokens must be"):
        Limits(max_batch_tokens=True)
    with pytest.raises(TypeError, match="no field"):
        limits.new(max_batch=8)
    config = ServerConfig(port=0)
    assert config.new(port=9000).port == 9000 and config.new(port=9000).host == "127.0.0.1"
    with pytest.raises(ServeError, match=r"port must be in 0\.\.65535"):
        config.new(port=70000)
    with pytest.raises(ServeError, match="server setting max_queue must be > 0"):
        ServerConfig(max_queue=0)
    with pytest.raises(TypeError):
        ServerConfig(colour="blue")  # type: ignore[call-arg]
    plan = GemmPlan("avx2_6x16", 256, 0, 0, True, 512, "default rule")
    assert plan._replace(kc=512).kc == 512 and plan._replace(kc=512).tile == "avx2_6x16"


def test_the_api_key_never_shows_in_a_repr() -> None:
    config = ServerConfig(api_key="s3cret-key")
    assert "s3cret" not in repr(config) and "api_key" not in repr(config)
    assert "port=8080" in repr(config)
    assert config != ServerConfig(api_key="other-key")  # still compared


def test_mutable_records_compare_by_value_and_are_unhashable() -> None:
    def enc(ids: list[int]) -> Encoding:
        n = len(ids)
        return Encoding(
            ids, [0] * n, [(0, 0)] * n, ["x"] * n, [0] * n, [None] * n, [0] * n, False, n
        )

    a, b = enc([1, 2]), enc([1, 2])
    assert a == b and a != enc([1, 3]) and len(a) == 2
    b.ids.append(3)
    assert a != b
    with pytest.raises(TypeError):
        hash(a)
    r = Response(200, b"{}")
    assert r.headers == [] and r.headers is not Response(200, b"{}").headers
    assert r == Response(200, b"{}", "application/json") and r != Response(404, b"{}")
    assert repr(r).startswith("Response(body=b'{}', close=False")


def test_the_worker_path_defines_no_dataclass() -> None:
    # Every @dataclass costs an exec() at import (zerostart._records); count them.
    probe = (
        "import sys, dataclasses\n"
        "made = []\n"
        "real = dataclasses._process_class\n"
        "def spy(cls, *a, **k):\n"
        "    made.append(cls.__module__ + '.' + cls.__qualname__)\n"
        "    return real(cls, *a, **k)\n"
        "dataclasses._process_class = spy\n"
        "import zerostart.serve.__main__, zerostart.serve.server, zerostart.pipeline\n"
        "import zerostart.engine.cpu_native, zerostart.tokenize\n"
        "print(made)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PYTHONPATH": str(SRC)},
    ).stdout
    made = eval(out)  # a list of strings, printed above
    assert made == [], f"@dataclass on the worker's import path: {made}"
