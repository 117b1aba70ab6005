"""The `zerostart` command line, run as a user runs it: a subprocess, exit codes, stderr."""

from __future__ import annotations

import json
import os
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
