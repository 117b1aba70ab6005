"""Triton kernel tests' child interpreter: the cases of a test file run in one process with
``TRITON_INTERPRET=1`` (set before anything imports triton), one torch import for all of them.

Light on purpose (standard library and pytest only): the test modules import it at collection.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_interpreted(script: str, cases: list[str]) -> str:
    """Run ``script``'s cases in one child interpreter under ``TRITON_INTERPRET=1`` (one torch
    import for all of them); returns its output, a line ``CASE ok …`` or ``CASE FAILED …`` each.
    Skips (pytest) where triton or torch is missing."""
    pytest.importorskip("triton", reason="the kernels are Triton; build-time dependency")
    pytest.importorskip("torch", reason="Triton's interpreter takes torch tensors")
    proc = subprocess.run(
        [sys.executable, script, *cases],
        capture_output=True,
        text=True,
        timeout=300,
        # tests/ on the path: the script imports this module (and its helpers) at its top
        env={
            **os.environ,
            "TRITON_INTERPRET": "1",
            "PYTHONPATH": os.pathsep.join(
                [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")]
            ),
        },
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def case_line(output: str, case: str) -> str:
    """The line ``run_interpreted`` printed for ``case`` (asserted to be there)."""
    line = next((x for x in output.splitlines() if x.split(" ", 1)[0] == case), None)
    assert line is not None, output
    return line
