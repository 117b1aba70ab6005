"""GPU test fixtures: the driver, and one "case" per real model (a GPU bundle + its references).

A case comes from ``$ZEROSTART_GPU_FIXTURES`` (default ``.gpu/``, written by
``tools/gpu_prep.py`` on a CPU machine and carried to the GPU machine) when it
holds that model; otherwise it is built here from the model folder, which needs
the test models and Triton 3.9 (each missing piece skips with its reason).

``ZEROSTART_GPU_MODELS`` (comma-separated) names the models to test, default
all three; a GPU session sets it to the models it carried. In a GPU session
``ZEROSTART_GPU_REQUIRED=1`` turns every skip into a failure: a test that
could not run there has not passed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
ALL_MODELS = ("minilm-sst2", "rampart-ner", "minilm-embed")


def _models() -> list[str]:
    chosen = os.environ.get("ZEROSTART_GPU_MODELS", "")
    names = [m for m in chosen.split(",") if m] or list(ALL_MODELS)
    unknown = set(names) - set(ALL_MODELS)
    if unknown:
        raise pytest.UsageError(f"ZEROSTART_GPU_MODELS: unknown {sorted(unknown)}")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_name" in metafunc.fixturenames:
        metafunc.parametrize("model_name", _models(), scope="session")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("ZEROSTART_GPU_REQUIRED") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in a GPU session, which counts as a failure: {reason}"


def gpu_reason() -> str | None:
    """Why no GPU test can run here, or None when the driver sees a device."""
    from zerostart.engine.cuda.driver import Driver, DriverNotFound

    try:
        drv = Driver.load()
        drv.init()
        drv.device(0)
    except DriverNotFound as exc:
        return str(exc)
    except Exception as exc:  # any CudaError: no usable device
        return f"no usable NVIDIA GPU: {exc}"
    return None


def _load_prep() -> ModuleType:
    path = REPO / "tools" / "gpu_prep.py"
    spec = importlib.util.spec_from_file_location("zerostart_gpu_prep", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def gpu_prep() -> ModuleType:
    return _load_prep()


@pytest.fixture(scope="session")
def gpu_arch() -> str:
    reason = gpu_reason()
    if reason is not None:
        pytest.skip(reason)
    from zerostart.engine.cuda.driver import Driver

    drv = Driver.load()
    drv.init()
    return f"sm_{drv.compute_capability(drv.device(0))}"


@dataclass(frozen=True)
class Case:
    """One real model on the GPU: its bundle and what the CPU side answered."""

    name: str
    bundle: Path
    arrays: dict[
        str, np.ndarray
    ]  # input_ids, attention_mask[, token_type_ids], cpu[, transformers]
    answers: Any  # the CPU pipeline's JSON answers for the corpus
    origin: str  # "prebuilt (.gpu/...)" or "built here"

    @property
    def types(self) -> np.ndarray | None:
        return self.arrays.get("token_type_ids")


def _read_case(name: str, folder: Path, origin: str) -> Case:
    import json

    with np.load(folder / "reference.npz") as data:
        arrays = {k: data[k] for k in data.files}
    answers = json.loads((folder / "answers.json").read_text())
    return Case(name, folder / "bundle", arrays, answers, origin)


@pytest.fixture(scope="session")
def case_for(
    gpu_arch: str,
    gpu_prep: ModuleType,
    model_dir: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], Case]:
    fixtures = Path(os.environ.get("ZEROSTART_GPU_FIXTURES", REPO / ".gpu"))
    made: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name in made:
            return made[name]
        prebuilt = fixtures / "models" / name
        if (prebuilt / "reference.npz").exists():
            made[name] = _read_case(name, prebuilt, f"prebuilt ({prebuilt})")
            return made[name]
        src = model_dir(name)  # skips with the reason when the folder cannot be had
        from zerostart.errors import ConvertError
        from zerostart.kernels.aot import require_triton

        try:
            require_triton()
        except ConvertError as exc:
            pytest.skip(f"{name}: no prebuilt case in {fixtures} and {exc}")
        out = tmp_path_factory.mktemp("gpu-case") / name
        gpu_prep.build_case(name, src, out, [gpu_arch])
        made[name] = _read_case(name, out, "built here")
        return made[name]

    return get


@pytest.fixture
def case(case_for: Callable[[str], Case], model_name: str) -> Case:
    return case_for(model_name)
