"""``zerostart build``: trace the worker, close over what it touched, write the image.

The image is three layers, least often changed first, so that a registry and a
node's cache share the big ones between models and releases:

    runtime      libc, the interpreter, the stdlib subset, numpy and its BLAS, ...
    application  the zerostart modules the worker imported (+ their pycs)
    model        the bundle, as /model

It runs as user 65532 with a read-only root in mind (no writes outside /tmp,
no pyc writes: ``PYTHONDONTWRITEBYTECODE=1``; pycs ship in the image).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zerostart
from zerostart.bundle.manifest import Manifest
from zerostart.cachedir import cache_base
from zerostart.errors import ImageError
from zerostart.image.blas import BlasDecision
from zerostart.image.blas import apply as apply_blas
from zerostart.image.closure import APPLICATION, MODEL, MODEL_DIR, RUNTIME, Closure, build_closure
from zerostart.image.layers import Entry, LayerBlob, layer_entries, write_layer
from zerostart.image.oci import ImageConfig, WrittenImage, write_docker_archive, write_oci_layout
from zerostart.image.readorder import read_order
from zerostart.image.trace import Trace, trace_worker
from zerostart.oci import TITLE_ANNOTATION
from zerostart.warmup import TRACE_NAME

SOURCE_URL = "https://github.com/zerostart/zerostart"
CONTAINER_PORT = 8080
NONROOT_UID = 65532  # distroless' "nonroot": no collision with host users, not root

FORMATS = ("oci", "docker-archive")
PASSWD = f"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/tmp:/sbin/nologin\n"
GROUP = f"root:x:0:\nnonroot:x:{NONROOT_UID}:\n"


# eStargz chunk size, chosen by measurement (bench/lazy_chunks.py, docs/imagefs.md): a
# chunk profile of the PyTorch server's start prefetches 137 MB in 1,662 range requests at
# 256 KiB, 158 MB / 1,366 at 1 MiB, 194 MB / 1,235 at 4 MiB (the reference's default):
# 30 % fewer bytes for 35 % more requests, most of them for small files either way.
CHUNK_SIZE_BYTES = 256 * 1024


@dataclass(frozen=True)
class BuildOptions:
    """How to build; the defaults make the CPU image a user wants."""

    device: str | None = None  # None: the bundle's own device
    arch: str | None = (
        None  # GPU architecture the image targets (sm_86): a label, for the scheduler
    )
    format: str = "oci"
    compression: str = "estargz"  # gzip tar layers with a TOC: lazily pullable
    tag: str = "latest"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    strip_debug: bool = True
    drop_openssl: bool = True  # a loopback worker serves no TLS: see closure.OPENSSL_EXCLUDES
    blas: str = "auto"  # numpy's OpenBLAS or zerostart's minimal BLAS: see image/blas.py
    keep_sources: bool = False  # runtime layer: .py beside each .pyc (tracebacks with lines)
    python: str = sys.executable  # the build environment whose files the image takes
    worker_module: str = "zerostart.serve"  # the server the image runs (python -m MODULE /model)
    cache_dir: str = field(default_factory=lambda: str(cache_base()))  # zerostart/cachedir.py
    chunk_size: int = CHUNK_SIZE_BYTES  # eStargz chunk size of the layers


@dataclass(frozen=True)
class BuildResult:
    image: WrittenImage
    trace_path: str
    closure: Closure
    layers: tuple[LayerBlob, ...]
    blas: BlasDecision | None = None


def app_package_dir() -> str:
    """The zerostart package folder this build takes the application layer from."""
    return os.path.dirname(os.path.realpath(zerostart.__file__))


def trace_path_for(out: str | os.PathLike[str], fmt: str) -> Path:
    return Path(out) / TRACE_NAME if fmt == "oci" else Path(f"{out}.trace.json")


def build_image(
    bundle: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: BuildOptions = BuildOptions(),
    *,
    progress: Callable[[str, float], None] | None = None,
) -> BuildResult:
    """Build an image of ``bundle`` at ``out`` (an OCI layout folder or a docker-archive tar)."""
    if options.format not in FORMATS:
        raise ImageError(f"unknown output format {options.format!r}; choose from {FORMATS}")

    def step(name: str, fraction: float) -> None:
        if progress is not None:
            progress(name, fraction)

    manifest = Manifest.load(Path(bundle))
    device = options.device or manifest.device
    step("tracing the worker", 0.0)
    trace = trace_worker(
        bundle,
        manifest.task,
        python=options.python,
        module=options.worker_module,
        pythonpath=[os.path.dirname(app_package_dir())],
    )
    step("computing the closure", 0.3)
    closure = build_closure(
        trace,
        app_package_dir(),
        include=options.include,
        exclude=options.exclude,
        exclude_driver_libraries=True,
        strip_debug=options.strip_debug,
        drop_openssl=options.drop_openssl,
    )
    blas = apply_blas(closure, options.blas, manifest, device)
    cfg = image_config(closure, manifest, device, options, bundle)
    with tempfile.TemporaryDirectory(prefix="zerostart-build-") as work:
        blob_dir = (
            Path(out) / "blobs" / "sha256" if options.format == "oci" else Path(work) / "blobs"
        )
        order = read_order(trace, closure, bundle=bundle, keep_sources=options.keep_sources)
        layers = _write_layers(bundle, closure, blob_dir, Path(work), options, step, order)
        step("writing the image", 0.95)
        if options.format == "oci":
            image = write_oci_layout(
                out, cfg, list(layers), image_annotations(cfg), tag=options.tag
            )
        else:
            name = Path(str(out)).name.removesuffix(".tar") or "image"
            image = write_docker_archive(
                out, cfg, list(layers), repo_tag=f"zerostart/{name}:{options.tag}"
            )
    trace_file = trace_path_for(out, options.format)
    doc = trace_document(trace, closure, layers, order)
    doc["blas"] = {
        "blas": blas.blas,
        "reason": blas.reason,
        "replaced": list(blas.replaced),
        "saved_bytes": blas.saved_bytes,
        "warning": blas.warning,
    }
    trace_file.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    step("done", 1.0)
    return BuildResult(image, str(trace_file), closure, layers, blas)


def _write_layers(
    bundle: str | os.PathLike[str],
    closure: Closure,
    blob_dir: Path,
    work: Path,
    options: BuildOptions,
    step: Callable[[str, float], None],
    order: Sequence[str] = (),
) -> tuple[LayerBlob, ...]:
    blobs = []
    for i, (name, entries) in enumerate(layer_contents(bundle, closure, work, options)):
        step(f"writing the {name} layer", 0.4 + 0.18 * i)
        blobs.append(
            write_layer(
                name,
                entries,
                blob_dir,
                compression=options.compression,
                prioritized=order,
                chunk_size=options.chunk_size,
            )
        )
    return tuple(blobs)


def layer_contents(
    bundle: str | os.PathLike[str], closure: Closure, work: Path, options: BuildOptions
) -> list[tuple[str, list[Entry]]]:
    """(layer name, tar entries) of the three layers; pycs are compiled into ``work``."""
    cache = Path(options.cache_dir) / "strip"
    files = closure.files.values()
    runtime = layer_entries(
        [f for f in files if f.layer == RUNTIME],
        python=options.python,
        cache_tag=closure.cache_tag,
        work_dir=work / "runtime",
        cache_dir=cache,
        sourceless=not options.keep_sources,
    )
    runtime += [
        Entry("/etc/passwd", "file", data=PASSWD.encode()),
        Entry("/etc/group", "file", data=GROUP.encode()),
        Entry("/tmp", "dir", mode=0o1777),
    ]
    app = layer_entries(
        [f for f in files if f.layer == APPLICATION],
        python=options.python,
        cache_tag=closure.cache_tag,
        work_dir=work / "app",
        cache_dir=cache,
    )
    model = [
        Entry(f"{MODEL_DIR}/{p.relative_to(bundle).as_posix()}", "file", source=str(p))
        for p in sorted(Path(bundle).rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    ]
    return [(RUNTIME, runtime), (APPLICATION, app), (MODEL, model)]


def image_config(
    closure: Closure,
    manifest: Manifest,
    device: str,
    options: BuildOptions,
    bundle: str | os.PathLike[str],
) -> ImageConfig:
    """Entrypoint, user, env and labels of the image."""
    env = [
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "PYTHONHOME=/usr/local",
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONNOUSERSITE=1",
        "PYTHONUNBUFFERED=1",
        # UTF-8 for files and stdio without a locale in the image (closure.DEFAULT_EXCLUDES)
        "PYTHONUTF8=1",
        # -S below: site's work (path set-up, .pth files, sitecustomize probes) is one path
        "PYTHONPATH=" + closure.site_packages,
    ]
    if closure.library_path:
        env.append("LD_LIBRARY_PATH=" + ":".join(closure.library_path))
    if device == "cuda":
        env += ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute"]
    model_name = str(
        manifest.source.get("model") or manifest.source.get("name") or Path(bundle).resolve().name
    )
    labels = {
        "org.opencontainers.image.source": SOURCE_URL,
        TITLE_ANNOTATION: f"zerostart {model_name} ({manifest.task}, {device})",
        "org.opencontainers.image.version": zerostart.__version__,
        "zerostart.model": model_name,
        "zerostart.task": manifest.task,
        "zerostart.devices": device,
    }
    if options.arch:
        labels["zerostart.arch"] = options.arch
    return ImageConfig(
        # -S: no `import site` at start-up (PYTHONPATH above names the one folder it would
        # add); measured in docs/image.md.
        entrypoint=(closure.interpreter, "-S", "-m", options.worker_module, MODEL_DIR),
        cmd=("--host", "0.0.0.0", "--port", str(CONTAINER_PORT)),
        env=tuple(env),
        user=f"{NONROOT_UID}:{NONROOT_UID}",
        exposed_ports=(f"{CONTAINER_PORT}/tcp",),
        labels=tuple(sorted(labels.items())),
    )


def image_annotations(cfg: ImageConfig) -> dict[str, str]:
    """Manifest annotations: the same keys as the labels (registries show these)."""
    return dict(cfg.labels)


def trace_document(
    trace: Trace, closure: Closure, layers: Sequence[LayerBlob], order: Sequence[str] = ()
) -> dict[str, Any]:
    """The reviewable record saved next to the image: the raw trace and every file's reason."""
    return {
        "trace": trace.to_dict(),
        "files": [
            {
                "path": f.dest,
                "layer": f.layer,
                "source": f.source,
                "link": f.link_target,
                "reason": f.reason,
                "size": os.path.getsize(f.source) if f.source else 0,
            }
            for f in sorted(closure.files.values(), key=lambda f: f.dest)
        ],
        "excluded": [{"path": p, "why": w} for p, w in sorted(closure.excluded.items())],
        "library_path": closure.library_path,
        "read_order": list(order),  # image paths, first read first: eStargz prioritized files
        "layers": [
            {
                "name": la.name,
                "digest": la.digest,
                "diff_id": la.diff_id,
                "media_type": la.media_type,
                "size": la.size,
                "uncompressed_size": la.uncompressed_size,
                "file_count": la.file_count,
                "toc_digest": la.toc_digest,
                "prefetch_size": la.prefetch_size,
            }
            for la in layers
        ],
    }
