"""``zerostart run REF --lazy``: our MiniLM image, pushed to the real registry, run from imagefs.

Needs root (runc, FUSE, overlayfs), runc, docker-registry and the MiniLM model
folder; each missing piece skips with the reason. The answer is checked
against the pipeline run in this process (the reference answer), and the
command is stopped with Ctrl-C (SIGINT) to check that nothing stays mounted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from registry_server import RegistryServer, registry_binary, running_registry

from zerostart import chunkprofile
from zerostart.container.lazy import LazyContainer
from zerostart.container.runtime import STATE_ROOT, choose_runtime
from zerostart.errors import RuntimeToolError
from zerostart.image.build import build_image
from zerostart.image.profile import add_profile_layer
from zerostart.imagefs.mount import ImagefsError, is_mounted
from zerostart.procs import free_port
from zerostart.registry.client import pull, push
from zerostart.warmup import WarmupRequest, send

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(registry_binary() is None, reason="docker-registry not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="runc, FUSE and overlayfs need root"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.skipif(
        importlib.util.find_spec("pyfuse3") is None,
        reason="pyfuse3 not installed (pip install '.[imagefs]', needs libfuse3-dev)",
    ),
]

TEXT = "a wonderful, heartfelt film"
CLI_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def pushed(
    sst2_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RegistryServer, str]]:
    try:
        choose_runtime()
    except RuntimeToolError as exc:
        pytest.skip(f"no working OCI runtime: {exc}")
    image = build_image(sst2_bundle, tmp_path_factory.mktemp("img") / "sst2")
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        ref = f"{reg.address}/zerostart/minilm-sst2:1"
        push(image.image.path, ref)
        yield reg, ref


def _expected(bundle: Path) -> object:
    from zerostart.pipeline import Pipeline

    pipe = Pipeline.load(bundle)
    job = pipe.prepare("predict", {"inputs": TEXT})
    return json.loads(json.dumps(job.finish(pipe.execute(job.encodings)), default=float))


def _scores(answer: object) -> dict[str, float]:
    assert isinstance(answer, list)
    return {a["label"]: a["score"] for a in answer}


def test_lazy_container_answers_like_the_pipeline(
    pushed: tuple[RegistryServer, str], sst2_bundle: Path, tmp_path: Path
) -> None:
    _, ref = pushed
    port = free_port()
    c = LazyContainer(ref, port=port, mount_options={"cache_dir": tmp_path / "cache"})
    with c:
        status, answer = send(port, WarmupRequest("POST", "/predict", {"inputs": TEXT}))
        assert status == 200, answer
        want = _scores(_expected(sst2_bundle))
        got = _scores(answer)
        assert got.keys() == want.keys()
        assert np.allclose([got[k] for k in want], list(want.values()), atol=1e-5)
        stats = c.stats()
        assert stats["bytes_fetched"] > 0 and stats["reads"]["failed_reads"] == 0
        lower = Path(c._work) / "lower"
        assert is_mounted(lower)
    assert not is_mounted(lower) and not lower.exists()  # unmounted, work folder removed


def _clean_up_a_killed_run(pid: int, port: int, tmpdir: Path) -> list[str]:
    """What a `zerostart run --lazy` killed with SIGKILL leaves, removed; returns what it found.

    Its container (runc state under STATE_ROOT, id ``zerostart-<digest>-<pid>-<port>``),
    the overlay and FUSE mounts and the ``zerostart-run-*`` work folder (under ``tmpdir``,
    the child's ``TMPDIR``). The imagefs daemon unmounts and exits when its parent dies.
    """
    left: list[str] = []
    runc = shutil.which("runc")
    if runc is not None:
        listed = subprocess.run(
            [runc, "--root", STATE_ROOT, "list", "-q"], capture_output=True, text=True, timeout=30
        )
        for cid in listed.stdout.split():
            if cid.endswith(f"-{pid}-{port}"):
                left.append(f"container {cid}")
                subprocess.run(
                    [runc, "--root", STATE_ROOT, "delete", "--force", cid],
                    capture_output=True,
                    timeout=30,
                )
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(str(tmpdir) + "/")), reverse=True):
        left.append(f"mount {point}")
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
    for work in tmpdir.glob("zerostart-run-*"):
        left.append(f"folder {work}")
        shutil.rmtree(work, ignore_errors=True)
    return left


@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["default", "ignored"])
def test_run_lazy_command_stops_cleanly_on_ctrl_c(
    pushed: tuple[RegistryServer, str], tmp_path: Path, sigint: signal.Handlers
) -> None:
    """``sigint=SIG_IGN``: the command inherits SIGINT ignored, as a background job of a
    non-interactive shell does (``.ci/run &``); before the CLI restored it, SIGINT did
    nothing, and the SIGKILL fallback left a running container, mounts and a folder."""
    _, ref = pushed
    port = free_port()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "ZEROSTART_CACHE": str(tmp_path / "cache"), "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zerostart.cli", "run", ref, "--lazy", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )
    left: list[str] = []
    try:
        deadline = time.monotonic() + CLI_TIMEOUT_S
        status = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = send(port, WarmupRequest("POST", "/predict", {"inputs": TEXT}))
                break
            except OSError:
                time.sleep(0.1)
        assert status == 200
        stats = subprocess.run(
            [sys.executable, "-m", "zerostart.cli", "imagefs", "stats", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=True,
        )
        mounts = [s for s in json.loads(stats.stdout) if s["reference"] == ref]
        assert len(mounts) == 1 and mounts[0]["bytes_fetched"] > 0
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        left = _clean_up_a_killed_run(proc.pid, port, tmpdir)
    assert proc.returncode == 0, err
    assert not left, left  # a clean stop leaves nothing for the clean-up to find
    assert "unmounted and cleaned up" in err and "fetched" in err
    with open("/proc/self/mountinfo") as f:
        assert not any(mounts[0]["mountpoint"] in line for line in f)


def test_dead_imagefs_daemon_is_reported_not_hung(
    pushed: tuple[RegistryServer, str], tmp_path: Path
) -> None:
    _, ref = pushed
    port = free_port()
    c = LazyContainer(ref, port=port, mount_options={"cache_dir": tmp_path / "cache"})
    with c:
        assert c.mount is not None and c.mount._proc is not None
        os.kill(c.mount._proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(ImagefsError, match="imagefs daemon exited"):
            c.wait()
        assert time.monotonic() - t0 < 5


def test_chunk_profile_recorded_by_a_container_start_is_applied_by_the_next(
    pushed: tuple[RegistryServer, str], tmp_path: Path
) -> None:
    """Record a real start (runc, overlay over imagefs) to its first answer; carry the profile
    in the image; the next start prefetches exactly those chunks, in that order."""
    reg, ref = pushed
    record = tmp_path / "profile.json"
    port = free_port()
    options = {"cache_dir": tmp_path / "c1", "prefetch": False, "record": record}
    with LazyContainer(ref, port=port, mount_options=options):
        status, first = send(port, WarmupRequest("POST", "/predict", {"inputs": TEXT}))
        assert status == 200, first
    profile = chunkprofile.decode(record.read_bytes())
    files = list(dict.fromkeys(p for p, _ in profile.reads))
    # runc reads the user database, the kernel execs the interpreter, ld.so maps libpython
    # (page faults), and the worker maps its weights, in that order
    interpreter = next(i for i, f in enumerate(files) if f.rsplit("/", 1)[-1].startswith("python"))
    libpython = next(i for i, f in enumerate(files) if "libpython" in f)
    weights = next(i for i, f in enumerate(files) if f.startswith("model/"))
    assert interpreter < libpython < weights, files[:10]

    layout = tmp_path / "layout"
    pull(ref, layout)
    add_profile_layer(layout, profile)
    profiled = f"{reg.address}/zerostart/minilm-sst2:profiled"
    push(layout, profiled)
    port = free_port()
    c = LazyContainer(profiled, port=port, mount_options={"cache_dir": tmp_path / "c2"})
    with c:
        status, answer = send(port, WarmupRequest("POST", "/predict", {"inputs": TEXT}))
        assert status == 200 and answer == first
        deadline = time.monotonic() + 60
        while c.stats()["reads"]["prefetch"]["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        time.sleep(0.6)
        pre = c.stats()["reads"]["prefetch"]
    assert pre["source"] == "profile" and pre["state"] == "done", pre
    got = pre["profile"]
    assert got["entries"] == len(profile.reads) and got["skipped_missing"] == 0
    assert got["skipped_offset"] == 0 and got["chunks"] > 0
