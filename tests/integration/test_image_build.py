"""Build images of real bundles, run them in a real OCI runtime, check them with other tools.

Needs root (runc) and the tools from scripts/install_system_deps.sh; each test
skips with the reason when something is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from estargz_reference import run_reference
from zerostart import estargz
from zerostart.container.runtime import Container, choose_runtime
from zerostart.errors import RuntimeToolError
from zerostart.image.build import BuildOptions, BuildResult, build_image
from zerostart.image.inspect import inspect_image
from zerostart.oci import read_oci_layout
from zerostart.procs import free_port
from zerostart.warmup import TRACE_NAME, WarmupRequest, answers_match, send

pytestmark = [pytest.mark.integration, pytest.mark.root]

TOOL_TIMEOUT_S = 300
RUNTIME_BUDGET_BYTES = 40_000_000  # CPU runtime + application layers, compressed (issue 3)
# Issue 19's image without weights (target 12 MB unpacked, 5 MB compressed): measured 14.98 /
# 5.61 MB on CPython 3.11.7 + Debian 12's glibc (docs/image.md); the budget keeps what was won.
UNPACKED_BUDGET_BYTES = 16_000_000
COMPRESSED_BUDGET_BYTES = 6_000_000
TEXTS = ["My name is Clara Schmidt and I live in Paris.", "The weather is lovely today."]


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the OCI runtime creates namespaces and mounts")


def _need_runtime() -> None:
    try:
        choose_runtime()
    except RuntimeToolError as exc:
        pytest.skip(f"no working OCI runtime: {exc}")


def _pipeline_answer(bundle: Path, route: str, body: dict[str, object]) -> object:
    """What the pipeline answers in this process (numpy's OpenBLAS), as JSON would carry it."""
    from zerostart.pipeline import Pipeline

    pipe = Pipeline.load(bundle)
    job = pipe.prepare(route, body)
    return json.loads(json.dumps(job.finish(pipe.execute(job.encodings)), default=float))


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/install_system_deps.sh installs it)")
    return path


@pytest.fixture(scope="module")
def bundle_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    from zerostart.model.convert import convert

    def make(model: Path) -> Path:
        out = tmp_path_factory.mktemp("bundle") / model.name
        convert(model, out)
        return out

    return make


@pytest.fixture(scope="module")
def embed_bundle(bundle_of: Callable[[Path], Path], minilm_embed_dir: Path) -> Path:
    return bundle_of(minilm_embed_dir)


@pytest.fixture(scope="module")
def embed_image(embed_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build_image(embed_bundle, tmp_path_factory.mktemp("img") / "embed")


def test_image_runs_in_an_oci_runtime_and_answers_like_the_pipeline(
    embed_image: BuildResult, embed_bundle: Path, tmp_path: Path
) -> None:
    _need_root()
    _need_runtime()
    body = {"inputs": TEXTS}
    expected = _pipeline_answer(embed_bundle, "embed", body)
    port = free_port()
    log = tmp_path / "container.log"
    with Container(embed_image.image.path, port=port, log_path=str(log)) as c:
        status, answer = send(port, WarmupRequest("POST", "/embed", body))
        assert status == 200, answer
        assert np.allclose(np.array(answer), np.array(expected), atol=1e-5)
        status, info = send(port, WarmupRequest("GET", "/info"))
        assert status == 200 and info["task"] == "embeddings"
        # every successful warm-up answer recorded at build time is reproduced in the container
        for rec in json.loads(Path(embed_image.trace_path).read_text())["trace"]["requests"]:
            if "answer" in rec:
                got = send(port, WarmupRequest(rec["method"], rec["path"], rec["body"]))
                assert got[0] == 200 and answers_match(got[1], rec["answer"]), rec["path"]
    assert c.stop() is None  # already stopped and deleted by the context manager
    # the image's Python imports hashlib without OpenSSL and without a logged traceback
    # (before: "code for hash md5 was not found", sha1, sha512, blake2, sha3, shake)
    text = log.read_text(errors="replace")
    assert "was not found" not in text and "Traceback" not in text, text[:2000]


def test_run_check_replays_the_builds_warmup_and_fails_on_a_drifted_answer(
    embed_image: BuildResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`zerostart run IMAGE --check`: the trace's recorded answers, replayed in the container."""
    _need_root()
    _need_runtime()
    from zerostart.cli.main import main

    image = Path(embed_image.image.path)
    assert main(["run", str(image), "--check", "--port", str(free_port())]) == 0
    assert "all warm-up answers match the trace" in capsys.readouterr().out
    # the same image whose trace recorded another embedding: the check must say which request
    drifted = tmp_path / "drifted"
    shutil.copytree(image, drifted)
    doc = json.loads((drifted / TRACE_NAME).read_text())
    rec = next(r for r in doc["trace"]["requests"] if r.get("path") == "/embed" and "answer" in r)
    rec["answer"][0][0] += 0.5
    (drifted / TRACE_NAME).write_text(json.dumps(doc))
    assert main(["run", str(drifted), "--check", "--port", str(free_port())]) == 1
    out = capsys.readouterr()
    assert "check: FAILED" in out.out and "check failed: POST /embed: HTTP 200" in out.err


def test_build_is_reproducible(
    embed_image: BuildResult, embed_bundle: Path, tmp_path: Path
) -> None:
    again = build_image(embed_bundle, tmp_path / "again")
    assert again.image.manifest_digest == embed_image.image.manifest_digest
    assert [la.digest for la in again.layers] == [la.digest for la in embed_image.layers]


def test_two_models_share_runtime_and_application_layers(
    embed_image: BuildResult,
    bundle_of: Callable[[Path], Path],
    rampart_ner_dir: Path,
    tmp_path: Path,
) -> None:
    ner = build_image(bundle_of(rampart_ner_dir), tmp_path / "ner")
    a = {la.name: la.digest for la in embed_image.layers}
    b = {la.name: la.digest for la in ner.layers}
    assert a["runtime"] == b["runtime"]
    assert a["application"] == b["application"]
    assert a["model"] != b["model"]


def test_image_contents_and_size_budget(embed_image: BuildResult) -> None:
    report = inspect_image(embed_image.image.path)
    paths = {f.path for f in report.files}
    assert "/usr/local/bin/python3.11" in paths or any(
        p.startswith("/usr/local/bin/python3") for p in paths
    )
    assert "/model/weights.safetensors" in paths
    for heavy in ("torch", "transformers", "tokenizers", "safetensors", "onnx"):
        assert not any(f"/site-packages/{heavy}/" in p for p in paths), (
            f"{heavy} is build-time only"
        )
    assert not any(p.startswith(("/root/", "/work/")) for p in paths), "build host paths leak"
    # Lean defaults: no OpenSSL (hashlib falls back to _sha256, which the worker's bundle
    # check then uses in the run test above), and the runtime ships compiled modules only.
    assert not any("libcrypto" in p or "libssl" in p or "/_ssl." in p for p in paths)
    assert any("/lib-dynload/_sha256." in p for p in paths)
    assert "/usr/local/lib/python3.11/os.pyc" in paths
    runtime_sources = [
        p
        for p in paths
        if p.startswith("/usr/local/lib/python3.11/")
        and p.endswith(".py")
        and "/zerostart/" not in p
    ]
    assert not runtime_sources, runtime_sources[:5]  # zerostart's own keep theirs: tracebacks
    runtime = report.layer("runtime").size + report.layer("application").size
    assert runtime <= RUNTIME_BUDGET_BYTES, f"runtime closure {runtime / 1e6:.1f} MB compressed"
    config_user = report.labels  # labels/annotations are part of the contract with schedulers
    assert (
        config_user["zerostart.devices"] == "cpu" and config_user["zerostart.task"] == "embeddings"
    )


def test_every_cpu_bundle_with_kernels_carries_no_numpy_and_fits_the_budget(
    embed_image: BuildResult, minilm_embed_dir: Path, embed_bundle: Path, tmp_path: Path
) -> None:
    """The image budget without weights (UNPACKED_BUDGET_BYTES, COMPRESSED_BUDGET_BYTES), for
    the default bundle and an AVX-512-only one alike.

    Every kernel build carries its own fp32 products and the worker imports no numpy
    (issue 19, docs/cpu.md): its trace touches neither, so the image carries no numpy and
    no BLAS at all; only the numpy engine (--cpu-arch none) keeps numpy and OpenBLAS.
    """
    from zerostart.model.convert import convert

    if shutil.which("gcc") is None or shutil.which("nm") is None:
        pytest.skip("gcc and binutils build the minimal BLAS (scripts/install_system_deps.sh)")
    results = [embed_image]
    if "avx512f" in Path("/proc/cpuinfo").read_text():  # the build traces a warm-up run
        v4 = tmp_path / "embed-v4"
        convert(minilm_embed_dir, v4, cpu_archs=["x86-64-v4"])
        results.append(build_image(v4, tmp_path / "img"))
    for result in results:
        assert result.blas is not None and result.blas.blas == "none", result.blas
        report = inspect_image(result.image.path)
        sizes = {f.path: f.size for f in report.files}
        assert not [p for p in sizes if "numpy" in p], [p for p in sizes if "numpy" in p][:5]
        unpacked = sum(la.uncompressed_size for la in result.layers if la.name != "model")
        compressed = sum(la.size for la in result.layers if la.name != "model")
        assert unpacked <= UNPACKED_BUDGET_BYTES and compressed <= COMPRESSED_BUDGET_BYTES, (
            unpacked,
            compressed,
        )
        trace = json.loads(Path(result.trace_path).read_text())
        assert trace["blas"]["blas"] == "none"
    none = tmp_path / "embed-none"
    convert(minilm_embed_dir, none, cpu_archs=[])
    numpy_engine = build_image(none, tmp_path / "img-none")
    assert numpy_engine.blas is not None and numpy_engine.blas.blas == "openblas"
    assert "numpy engine" in numpy_engine.blas.reason
    # The default image runs on this CPU, and answers like the pipeline.
    _need_root()
    _need_runtime()
    body = {"inputs": TEXTS}
    expected = _pipeline_answer(embed_bundle, "embed", body)
    port = free_port()
    with Container(embed_image.image.path, port=port):
        status, answer = send(port, WarmupRequest("POST", "/embed", body))
        assert status == 200, answer
        assert np.allclose(np.array(answer), np.array(expected), atol=1e-5)
        pair = {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS}}
        status, scores = send(port, WarmupRequest("POST", "/similarity", pair))
        assert status == 200 and abs(scores[0] - 1.0) < 1e-5, scores  # a product in numpy


def test_skopeo_accepts_layout_and_docker_archive(embed_image: BuildResult, tmp_path: Path) -> None:
    skopeo = _need("skopeo")
    path = embed_image.image.path
    out = subprocess.run(
        [skopeo, "inspect", f"oci:{path}"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=True,
    )
    doc = json.loads(out.stdout)
    assert doc["Layers"] == [la.digest for la in embed_image.layers]
    assert doc["Labels"]["zerostart.devices"] == "cpu"
    subprocess.run(
        [
            skopeo,
            "copy",
            f"oci:{path}",
            f"docker-archive:{tmp_path / 'copy.tar'}:zerostart/embed:1",
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=True,
    )


def test_our_docker_archive_is_read_by_skopeo(embed_bundle: Path, tmp_path: Path) -> None:
    skopeo = _need("skopeo")
    result = build_image(
        embed_bundle, tmp_path / "embed.tar", BuildOptions(format="docker-archive")
    )
    out = subprocess.run(
        [skopeo, "inspect", f"docker-archive:{result.image.path}"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=True,
    )
    doc = json.loads(out.stdout)
    assert doc["Architecture"] == "amd64" and len(doc["Layers"]) == 3
    assert Path(result.trace_path).exists()


def test_umoci_unpacks_the_layout(embed_image: BuildResult, tmp_path: Path) -> None:
    _need_root()
    umoci = _need("umoci")
    dest = tmp_path / "bundle"
    subprocess.run(
        [umoci, "unpack", "--image", f"{embed_image.image.path}:latest", str(dest)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=True,
    )
    rootfs = dest / "rootfs"
    assert (rootfs / "model" / "manifest.json").is_file()
    assert (rootfs / "usr" / "local" / "lib").is_dir()
    config = json.loads((dest / "config.json").read_text())
    assert config["process"]["user"]["uid"] == 65532


def test_layers_are_estargz_with_the_read_order_first(embed_image: BuildResult) -> None:
    image = read_oci_layout(embed_image.image.path)
    for layer, desc in zip(image.layers, image.manifest["layers"], strict=True):
        toc = estargz.read_toc(layer.path)
        toc.verify(desc["annotations"][estargz.TOC_DIGEST_ANNOTATION])
        built = next(la for la in embed_image.layers if la.digest == layer.digest)
        assert desc["annotations"][estargz.UNCOMPRESSED_SIZE_ANNOTATION] == str(
            built.uncompressed_size
        )
        # the warm-up read something from every layer: each has a prefetch range
        assert 0 < toc.prefetch_end == built.prefetch_size < layer.size, layer.title
    runtime = estargz.read_toc(image.layers[0].path)
    regular = [e.name for e in runtime.entries if e.type == "reg"]
    assert regular[0] == embed_image.closure.interpreter.lstrip("/")  # exec'd first
    prefetched = regular[: regular.index(estargz.PREFETCH_LANDMARK)]
    assert "usr/local/lib/python3.11/os.pyc" in prefetched
    assert "etc/passwd" not in prefetched  # runc reads it, the worker does not
    model = estargz.read_toc(image.layers[2].path)
    assert all(
        c.next_offset <= model.prefetch_end for c in model.chunks["model/weights.safetensors"]
    )


def test_reference_estargz_verifies_every_layer(
    embed_image: BuildResult, embed_bundle: Path, estargz_reference_tool: Path
) -> None:
    tool = estargz_reference_tool
    image = read_oci_layout(embed_image.image.path)
    served: dict[str, dict[str, object]] = {}
    for layer, desc in zip(image.layers, image.manifest["layers"], strict=True):
        toc_digest = desc["annotations"][estargz.TOC_DIGEST_ANNOTATION]
        _, files, _ = run_reference(tool, "verify", layer.path, toc_digest)
        served.update(files)
    weights = (embed_bundle / "weights.safetensors").read_bytes()
    got = served["model/weights.safetensors"]
    assert got["sha256"] == hashlib.sha256(weights).hexdigest()
    assert got["chunks"] == -(-len(weights) // BuildOptions().chunk_size)
    assert served[embed_image.closure.interpreter.lstrip("/")]["type"] == "reg"


def test_podman_stores_and_runs_the_image(
    embed_image: BuildResult, embed_bundle: Path, tmp_path: Path
) -> None:
    _need_root()
    run_root = tempfile.mkdtemp(prefix="zs-podman-")  # podman wants a runroot under 50 chars
    podman = [_need("podman"), "--root", str(tmp_path / "root"), "--runroot", run_root]
    podman += ["--storage-driver", "vfs"]  # a private store: nothing of the host's is touched
    ref = f"oci:{embed_image.image.path}:latest"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*podman, *args], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )

    pulled = run("pull", "-q", ref)
    assert pulled.returncode == 0, pulled.stderr
    image_id = pulled.stdout.strip().splitlines()[-1]
    try:
        mounted = run("image", "mount", image_id)
        assert mounted.returncode == 0, mounted.stderr
        rootfs = Path(mounted.stdout.strip())
        manifest = (embed_bundle / "manifest.json").read_bytes()
        assert (rootfs / "model" / "manifest.json").read_bytes() == manifest
        assert (rootfs / embed_image.closure.interpreter.lstrip("/")).is_file()
        script = "import json; print(json.load(open('/model/manifest.json'))['task'])"
        ran = run(
            "run", "--rm", "--net=none", "--ulimit", "host", "--entrypoint",
            embed_image.closure.interpreter, image_id, "-c", script,
        )  # fmt: skip
    finally:
        run("image", "unmount", "--all")
        run("rmi", "--all", "--force")
        shutil.rmtree(run_root, ignore_errors=True)
    if ran.returncode != 0 and ("setrlimit" in ran.stderr or "cgroup" in ran.stderr):
        pytest.skip(f"podman stored the image but cannot run containers here: {ran.stderr[-300:]}")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "embeddings"
