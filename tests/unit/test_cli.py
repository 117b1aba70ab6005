"""The `zerostart` command line, run as a user runs it: a subprocess, exit codes, stderr."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
TIMEOUT_S = 120


def zerostart(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "zerostart.cli", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
    )


def test_help_lists_every_command() -> None:
    out = zerostart("--help")
    assert out.returncode == 0
    for command in ("convert", "serve", "info", "bench", "build", "run", "push", "snapshot"):
        assert command in out.stdout
    serve = zerostart("serve", "--help")
    assert serve.returncode == 0 and "--max-client-batch-size" in serve.stdout


def test_serve_help_names_the_status_the_server_sends_for_too_many_inputs() -> None:
    """It said 413; the server sends TEI's 422 Validation (api/_parse.py ``check_batch``)."""
    from zerostart.api._parse import check_batch
    from zerostart.errors import InputError

    with pytest.raises(InputError) as info:
        check_batch(5, "inputs", 4)
    text = " ".join(zerostart("serve", "--help").stdout.split())
    option = text[text.rindex("--max-client-batch-size MAX_CLIENT_BATCH_SIZE") :][:160]
    assert f"is {info.value.status} Validation" in option, option
    assert info.value.status == 422 and "413" not in option


def test_no_command_prints_help_and_fails() -> None:
    out = zerostart()
    assert out.returncode == 2
    assert "COMMAND" in out.stdout


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = zerostart("convert", str(tmp_path / "empty"), str(tmp_path / "out"))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("zerostart convert: error: ")
    assert "config.json" in errors[0]  # names the file at fault
    assert not (tmp_path / "out").exists()  # nothing half-written
    debug = zerostart("--debug", "convert", str(tmp_path / "empty"), str(tmp_path / "out"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_serve_on_a_missing_bundle_says_how_to_make_one(tmp_path: Path) -> None:
    out = zerostart("serve", str(tmp_path / "nope"), "--port", "0")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "zerostart convert" in out.stderr
    # a folder that does not exist is named as such (it used to say "no manifest: this
    # folder is not a zerostart bundle", which sends the user looking inside it)
    assert f"{tmp_path / 'nope'}: does not exist" in out.stderr, out.stderr
    (tmp_path / "empty").mkdir()
    empty = zerostart("serve", str(tmp_path / "empty"), "--port", "0")
    assert empty.returncode == 1 and "not a zerostart bundle" in empty.stderr, empty.stderr


@pytest.mark.parametrize("inherited", [signal.SIG_DFL, signal.SIG_IGN], ids=["default", "ignored"])
def test_sigint_stops_a_command_even_when_inherited_as_ignored(
    tmp_path: Path, inherited: signal.Handlers
) -> None:
    """A background job of a non-interactive shell (``zerostart ... &`` in a script) starts
    with SIGINT ignored; the CLI takes it back, so Ctrl-C / ``kill -INT`` still unwinds its
    cleanup. The command: a pull from a registry that accepts the connection and never
    answers (it would wait for its 60 s network timeout)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(30)
        port = silent.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "zerostart.cli", "pull", f"127.0.0.1:{port}/a:1",
             str(tmp_path / "layout")],
            env={**os.environ, "PYTHONPATH": str(SRC)},
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, inherited),
        )  # fmt: skip
        try:
            conn, _ = silent.accept()  # the CLI is up and waiting for an answer

            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            with contextlib.suppress(NameError):
                conn.close()
    assert proc.returncode == 130, err
    assert "zerostart pull: interrupted" in err and "Traceback" not in err


def test_convert_then_info(model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    out = zerostart("convert", "-q", str(model_dir("minilm-embed")), str(bundle))
    assert out.returncode == 0, out.stderr
    assert "embeddings" in out.stdout
    info = zerostart("info", str(bundle), "--verify")
    assert info.returncode == 0, info.stderr
    assert "every file's sha256 verified" in info.stdout
    manifest = json.loads(zerostart("info", str(bundle), "--json").stdout)
    assert manifest["task"] == "embeddings" and manifest["pooling"]["mode"] == "mean"
    # Tampering is caught and reported as a one-line error.
    vocab = bundle / "vocab.txt"
    vocab.write_text(vocab.read_text().replace("[UNK]", "[UNX]", 1))
    bad = zerostart("info", str(bundle))
    assert bad.returncode == 1 and "vocab.txt" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("flag", ["--device", "--task"])
def test_bad_choices_are_usage_errors(flag: str, tmp_path: Path) -> None:
    out = zerostart("convert", str(tmp_path), str(tmp_path / "o"), flag, "nonsense")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_demo_refuses_a_port_another_program_holds() -> None:
    """scripts/demo.sh sent its requests to whatever held :8080; now it checks the port
    first, before installing anything, and says it is taken."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        out = subprocess.run(
            ["bash", str(SRC.parent / "scripts" / "demo.sh")],
            env={**os.environ, "PORT": str(port), "ZEROSTART_VENV": sys.prefix},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"port {port} is taken" in out.stderr and "PORT=8081" in out.stderr
    assert "installing" not in out.stdout  # refused before anything else
