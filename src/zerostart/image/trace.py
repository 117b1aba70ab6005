"""Record what a warmed-up worker touches: the input of the image closure.

Theory of operation. We start the real worker from the build environment, but
through a small bootstrap passed with ``python -c`` that first writes down the
modules already loaded by the interpreter's own start-up (encodings, site,
...), then installs a :func:`sys.addaudithook` hook that appends one line per
``open`` / ``import`` / ``ctypes.dlopen`` event to a file, and finally runs
the worker module exactly as ``python -m`` would (``runpy``). The hook writes
with ``os.write`` on a descriptor opened before it was installed, so it raises
no audit events of its own and loses nothing if the worker is killed.

Then we send warm-up requests to every route the model serves (plus the
error paths: bad JSON, wrong route, wrong method), read ``/proc/PID/maps`` for
the native code actually mapped, and stop the worker with SIGTERM so that its
shutdown path is traced too. The request type and the probe are
:mod:`zerostart.warmup`'s: the node replays the recorded answers from there
before it snapshots a container. The result is a :class:`Trace`, saved as JSON
next to the image so a user can see why each file is there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zerostart.errors import ImageError
from zerostart.procs import free_port, stop_process
from zerostart.warmup import WarmupRequest, send, wait_healthy

TRACE_FORMAT_VERSION = 1
READY_TIMEOUT_S = 120.0  # worker start incl. a first-time bundle check on a slow disk
STOP_TIMEOUT_S = 30.0  # the worker drains in-flight requests on SIGTERM
INFO_TIMEOUT_S = 30.0

# Runs inside the traced worker. Standard library only, no imports beyond os/sys
# before the hook is in place (what they import is recorded as start-up modules).
BOOTSTRAP = r"""
import os, sys
_fd = os.open(os.environ.pop("ZEROSTART_TRACE_OUT"), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
def _emit(kind, value):
    os.write(_fd, (kind + "\t" + str(value).replace("\n", " ") + "\n").encode("utf-8", "surrogateescape"))
for _name, _mod in sorted(sys.modules.items()):
    _emit("startup", _name + "\t" + str(getattr(_mod, "__file__", None) or ""))
def _zerostart_audit(event, args):
    if event == "open":
        path = args[0]
        if isinstance(path, int):
            return
        path = os.fsdecode(path)
        mode, flags = args[1], args[2] or 0
        writing = (mode is not None and any(c in mode for c in "wax+")) or (flags & 3) != 0
        _emit("write" if writing else "open", os.path.abspath(path))
    elif event == "import":
        _emit("import", args[0])
    elif event == "ctypes.dlopen" and args[0] is not None:
        _emit("dlopen", args[0])
sys.addaudithook(_zerostart_audit)
del _name, _mod
_module = sys.argv[1]
sys.argv = sys.argv[1:]
import runpy
runpy._run_module_as_main(_module, alter_argv=False)
"""

# Asked of the build interpreter once: where its pieces live (all realpaths).
INFO_SCRIPT = r"""
import json, os, sys, sysconfig, site, platform
r = os.path.realpath
print(json.dumps({
    "executable": r(sys.executable),
    "version": platform.python_version(),
    "cache_tag": sys.implementation.cache_tag,
    "base_prefix": r(sys.base_prefix),
    "prefix": r(sys.prefix),
    "stdlib": r(sysconfig.get_path("stdlib")),
    "platstdlib": r(sysconfig.get_path("platstdlib")),
    "site_packages": [r(p) for p in site.getsitepackages()],
    "ldlibrary": sysconfig.get_config_var("LDLIBRARY"),
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "machine": platform.machine(),
    "py_version_short": sysconfig.get_python_version(),
}))
"""

SAMPLE_TEXT = "My name is Clara Schmidt and I live at 12 Rue de Rivoli in Paris; I love this film."
OTHER_TEXT = "The service was slow, but the food was excellent."
TOKEN_AGGREGATIONS = ("none", "simple", "first", "average", "max")
ROUTE_FOR_TASK = {
    "sequence-classification": "predict",
    "token-classification": "tokens",
    "embeddings": "embed",
}


def warmup_requests(task: str) -> list[WarmupRequest]:
    """Requests covering every route a ``task`` worker serves and its error paths.

    The successful ones go through tokenizer, batcher, engine and task head with
    every option that selects different code (pairs, batches, aggregations);
    the failing ones run validation and error formatting, which a production
    worker also needs.
    """
    route = ROUTE_FOR_TASK.get(task)
    if route is None:
        raise ImageError(f"unknown task {task!r}: cannot choose warm-up requests")
    ok = [
        WarmupRequest("GET", "/health", must_succeed=True),
        WarmupRequest("GET", "/info", must_succeed=True),
        WarmupRequest("POST", f"/{route}", {"inputs": SAMPLE_TEXT}, must_succeed=True),
        WarmupRequest(
            "POST", f"/{route}", {"inputs": [SAMPLE_TEXT, OTHER_TEXT]}, must_succeed=True
        ),
        WarmupRequest(
            "POST", f"/{route}", {"inputs": SAMPLE_TEXT * 40, "truncate": True}, must_succeed=True
        ),
    ]
    if route == "predict":
        ok += [
            WarmupRequest(
                "POST", "/predict", {"inputs": [[SAMPLE_TEXT, OTHER_TEXT]]}, must_succeed=True
            ),
            WarmupRequest(
                "POST", "/predict", {"inputs": SAMPLE_TEXT, "raw_scores": True}, must_succeed=True
            ),
        ]
    elif route == "embed":
        ok += [
            WarmupRequest("POST", "/embed", {"inputs": SAMPLE_TEXT, "normalize": False}, True),
            WarmupRequest("POST", "/embed_all", {"inputs": SAMPLE_TEXT}, True),
            WarmupRequest(
                "POST",
                "/similarity",
                {"inputs": {"source_sentence": SAMPLE_TEXT, "sentences": [OTHER_TEXT]}},
                True,
            ),
            WarmupRequest(
                "POST",
                "/v1/embeddings",
                {"input": [SAMPLE_TEXT], "encoding_format": "base64"},
                must_succeed=True,
                compare=False,
            ),
            WarmupRequest("GET", "/v1/models", must_succeed=True),
        ]
    else:
        ok += [
            WarmupRequest(
                "POST", "/tokens", {"inputs": SAMPLE_TEXT, "aggregation_strategy": s}, True
            )
            for s in TOKEN_AGGREGATIONS
        ]
    ok += [  # every model serves these
        WarmupRequest("POST", "/tokenize", {"inputs": SAMPLE_TEXT}, must_succeed=True),
        WarmupRequest("POST", "/decode", {"ids": [[0, 1], [2]]}, must_succeed=True),
        WarmupRequest("POST", "/", {"inputs": SAMPLE_TEXT, "parameters": {}}, must_succeed=True),
    ]
    errors = [
        WarmupRequest("GET", "/metrics"),
        WarmupRequest("POST", f"/{route}", {"inputs": ""}),
        WarmupRequest("POST", f"/{route}", b"{not json"),
        WarmupRequest("POST", f"/{route}", {"inputs": 5}),
        WarmupRequest("POST", f"/{route}", {"inputs": SAMPLE_TEXT * 200, "truncate": False}),
        WarmupRequest("GET", f"/{route}"),
        WarmupRequest("GET", "/no-such-route"),
    ]
    errors += [
        WarmupRequest("POST", f"/{r}", {"inputs": SAMPLE_TEXT})
        for r in ROUTE_FOR_TASK.values()
        if r != route
    ]
    return ok + errors


@dataclass
class Trace:
    """What one warmed-up worker touched. Paths are absolute paths of the build host."""

    command: list[str]
    python: dict[str, Any]
    bundle: str
    task: str
    startup_modules: list[tuple[str, str]] = field(default_factory=list)  # (name, file or "")
    imports: list[str] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    dlopened: list[str] = field(default_factory=list)
    mapped: list[str] = field(default_factory=list)
    # (kind, value) of each first open/import/dlopen, interleaved as they happened: the
    # order a lazily pulled image is read in (eStargz prioritized files)
    events: list[tuple[str, str]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    exit_status: int | None = None
    elapsed_s: float = 0.0
    format_version: int = TRACE_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        data = dict(data)
        data["startup_modules"] = [tuple(x) for x in data.get("startup_modules", [])]
        data["events"] = [tuple(x) for x in data.get("events", [])]
        return cls(**data)


def interpreter_info(python: str, timeout_s: float = INFO_TIMEOUT_S) -> dict[str, Any]:
    """Ask ``python`` where its executable, stdlib and site-packages live."""
    cmd = [python, "-I", "-c", INFO_SCRIPT]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageError(f"cannot run the build interpreter {python}: {exc}") from exc
    if done.returncode != 0:
        raise ImageError(f"{python} failed to describe itself: {done.stderr.strip()[-800:]}")
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def run_warmup(port: int, requests: Sequence[WarmupRequest]) -> list[dict[str, Any]]:
    """Send each request; raise ImageError when one that must succeed does not (or any 5xx)."""
    out = []
    for req in requests:
        status, answer = send(port, req)
        record: dict[str, Any] = {"method": req.method, "path": req.path, "status": status}
        if req.must_succeed and req.method == "POST" and req.compare:
            record["body"] = req.body
            record["answer"] = answer
        out.append(record)
        if (req.must_succeed and status != 200) or status >= 500:
            raise ImageError(
                f"warm-up {req.method} {req.path} answered HTTP {status}: {str(answer)[:400]}",
                hint="the worker must answer its warm-up requests before an image is built",
            )
    return out


def read_maps(pid: int) -> list[str]:
    """Files mapped into ``pid`` (libraries, extension modules, mmapped weights)."""
    paths = []
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError as exc:
        raise ImageError(f"cannot read /proc/{pid}/maps: {exc}") from exc
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/") and not parts[5].endswith(" (deleted)"):
            paths.append(parts[5])
    return sorted(set(paths))


def trace_worker(
    bundle: str | os.PathLike[str],
    task: str,
    *,
    python: str = sys.executable,
    module: str = "zerostart.serve",
    extra_args: Sequence[str] = (),
    requests: Sequence[WarmupRequest] | None = None,
    pythonpath: Sequence[str] = (),
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Trace:
    """Run ``python -m module BUNDLE --host 127.0.0.1 --port P`` under the audit hook and warm it up."""
    info = interpreter_info(python)
    port = free_port()
    args = [os.path.abspath(bundle), "--host", "127.0.0.1", "--port", str(port), *extra_args]
    cmd = [python, "-c", BOOTSTRAP, module, *args]
    env = dict(os.environ)
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*pythonpath, env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    reqs = list(requests) if requests is not None else warmup_requests(task)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zerostart-trace-") as tmp:
        events = Path(tmp) / "events.tsv"
        events.touch()
        log = Path(tmp) / "worker.log"
        env["ZEROSTART_TRACE_OUT"] = str(events)
        with open(log, "wb") as log_f:
            proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=log_f, stderr=subprocess.STDOUT)
            try:
                wait_healthy(port, proc, ready_timeout_s)
                records = run_warmup(port, reqs)
                mapped = read_maps(proc.pid)
            except ImageError as exc:
                stop_process(proc, timeout_s=STOP_TIMEOUT_S)
                tail = log.read_text(errors="replace")[-1500:]
                raise ImageError(f"{exc}; worker log:\n{tail}") from exc
            finally:
                status = stop_process(proc, timeout_s=STOP_TIMEOUT_S)
        trace = Trace(
            command=[python, "-m", module, *args],
            python=info,
            bundle=os.path.realpath(bundle),
            task=task,
            mapped=mapped,
            requests=records,
            exit_status=status,
            elapsed_s=round(time.monotonic() - t0, 3),
        )
        _parse_events(events.read_text("utf-8", "surrogateescape"), trace, tmp)
    return trace


def _parse_events(text: str, trace: Trace, ignore_dir: str) -> None:
    seen: dict[str, set[str]] = {"open": set(), "write": set(), "import": set(), "dlopen": set()}
    for line in text.splitlines():
        kind, _, value = line.partition("\t")
        if kind == "startup":
            name, _, file = value.partition("\t")
            trace.startup_modules.append((name, file))
            continue
        bucket = seen.get(kind)
        if bucket is None or value in bucket or value.startswith(ignore_dir):
            continue
        bucket.add(value)
        if kind != "write":
            trace.events.append((kind, value))
        {"open": trace.opened, "write": trace.written, "import": trace.imports}.get(
            kind, trace.dlopened
        ).append(value)
