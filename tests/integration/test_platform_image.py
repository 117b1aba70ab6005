"""Image models through the start paths: runc boot that snapshots itself, then restores.

Needs root, runc and a working CRIU (each skips with the reason otherwise).
The worker key is honoured: a booted container gets it, and a container
restored from a snapshot taken with another key is refused and re-booted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from zerostart.platform.image_start import home_port
from zerostart.platform.starter import PathStarter
from zerostart.platform_toml import ModelConfig

pytestmark = [pytest.mark.integration, pytest.mark.root]
BODY = {"inputs": ["I love this", "a cat sat on the mat"]}


@pytest.fixture(scope="module")
def usable() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: runc and CRIU create namespaces, mounts and ptrace")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (scripts/install_system_deps.sh installs it)")
    criu = shutil.which("criu", path=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin")
    if criu is None:
        pytest.skip("criu not installed (run scripts/install_criu.sh)")
    out = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=60, check=False)
    if "Looks good" not in out.stdout + out.stderr:
        pytest.skip(f"criu check fails here: {(out.stdout + out.stderr).strip()[-200:]}")


@pytest.fixture(scope="module")
def embed_image(
    usable: None, bundle_for_model: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from zerostart.image.build import build_image

    out = tmp_path_factory.mktemp("img") / "embed"
    build_image(bundle_for_model("minilm-embed"), out)
    return out


def _embed(port: int, key: str | None) -> np.ndarray:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/embed",
        data=json.dumps(BODY).encode(),
        headers=headers,
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return np.array(json.loads(resp.read()))


def test_image_model_boots_snapshots_restores_and_checks_the_key(
    tmp_path: Path, embed_image: Path, embed_bundle: Path
) -> None:
    from zerostart.pipeline import Pipeline

    pipe = Pipeline.load(embed_bundle)
    job = pipe.prepare("embed", BODY)
    want = np.array(job.finish(pipe.execute(job.encodings)))
    name = f"img-{os.getpid()}"  # the home port follows the name
    model = ModelConfig(name=name, source=str(embed_image), source_kind="image")
    store = tmp_path / "store"

    async def main() -> None:
        first = PathStarter(None, snapshot_store=store, worker_key="key-one")
        try:
            booted = await first.start(model)
            assert booted.start_path == "cold_boot" and booted.port == home_port(name)
            assert [f.path for f in booted.fallbacks] == ["snapshot", "warm_slot"]
            got = await asyncio.to_thread(_embed, booted.port, "key-one")
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
            with pytest.raises(urllib.error.HTTPError) as info:  # the key is required
                await asyncio.to_thread(_embed, booted.port, None)
            assert info.value.code == 401
            await booted.stop()
            assert not booted.is_alive()

            restored = await first.start(model)
            assert restored.start_path == "snapshot", restored.fallbacks
            got = await asyncio.to_thread(_embed, restored.port, "key-one")
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
            await restored.stop()
        finally:
            await first.close()

        second = PathStarter(None, snapshot_store=store, worker_key="key-two")
        try:
            rebooted = await second.start(model)
            assert rebooted.start_path == "cold_boot"
            assert "another API key" in rebooted.fallbacks[0].reason
            got = await asyncio.to_thread(_embed, rebooted.port, "key-two")
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
            replica_pid = rebooted.pid
        finally:
            await second.close()
        assert not os.path.exists(f"/proc/{replica_pid}") or _zombie(replica_pid)

    asyncio.run(main())


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def runc_usable() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: runc and the models mount")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (scripts/install_system_deps.sh installs it)")


@pytest.fixture(scope="module")
def embed_image_runc(
    runc_usable: None,
    bundle_for_model: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    from zerostart.image.build import build_image

    out = tmp_path_factory.mktemp("img") / "embed"
    build_image(bundle_for_model("minilm-embed"), out)
    return out


def _mountinfo_options(pid: int, mount_point: str) -> list[str]:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == mount_point:
            return fields[5].split(",")
    raise AssertionError(f"{mount_point} is not mounted in {pid}")


def _host_mounted(path: Path) -> bool:
    points = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    return str(path) in points


def test_a_container_slot_serves_an_image_model(
    tmp_path: Path, embed_image_runc: Path, embed_bundle: Path
) -> None:
    from zerostart.container.runtime import STATE_ROOT
    from zerostart.pipeline import Pipeline
    from zerostart.platform.pool import WarmPool

    pipe = Pipeline.load(embed_bundle)
    job = pipe.prepare("embed", BODY)
    want = np.array(job.finish(pipe.execute(job.encodings)))
    model = ModelConfig(name="imgslot", source=str(embed_image_runc), source_kind="image")

    async def main() -> None:
        from zerostart.image.slot import build_slot_image

        image = await asyncio.to_thread(build_slot_image, tmp_path / "cache")
        pool = WarmPool({"cpu": 0, "container": 1}, slot_image=image)
        starter = PathStarter(pool, snapshots=False, worker_key="slot-key")
        try:
            await pool.start()
            await pool.wait_ready("container", timeout_s=180)
            replica = await starter.start(model)
            assert replica.start_path == "warm_slot", replica.fallbacks
            assert list(replica.phases_ms)[:2] == ["slot_assign", "image_mount"]
            got = await asyncio.to_thread(_embed, replica.port, "slot-key")
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
            with pytest.raises(urllib.error.HTTPError) as info:
                await asyncio.to_thread(_embed, replica.port, None)
            assert info.value.code == 401
            slot = replica.process.slot  # type: ignore[attr-defined]
            state = subprocess.run(
                ["runc", "--root", STATE_ROOT, "state", slot.container_id],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            pid = json.loads(state.stdout)["pid"]
            status = Path(f"/proc/{pid}/status").read_text()
            assert "\nUid:\t65532\t" in status  # not root
            assert "ro" in _mountinfo_options(pid, "/")  # read-only root
            assert "ro" in _mountinfo_options(pid, f"/models/{slot.name}")  # the model, read-only
            host_mount = pool.run_dir / "models" / slot.name  # type: ignore[operator]
            assert _host_mounted(host_mount)
            await replica.stop()
            assert not _host_mounted(host_mount)
            listed = subprocess.run(
                ["runc", "--root", STATE_ROOT, "list", "-q"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            assert slot.container_id not in listed.stdout.split()
        finally:
            await starter.close()
        assert pool.run_dir is not None and not pool.run_dir.exists()
        assert not _host_mounted(pool.run_dir / "models")

    asyncio.run(main())


def test_zerostart_up_serves_an_image_model_from_a_container_slot(
    tmp_path: Path, embed_image_runc: Path, embed_bundle: Path
) -> None:
    from platform_helpers import Gateway, wait_until

    from zerostart.image.slot import build_slot_image
    from zerostart.pipeline import Pipeline

    cache = tmp_path / "cache"
    build_slot_image(cache)  # what `zerostart up` builds (once) when a model is an image
    pipe = Pipeline.load(embed_bundle)
    job = pipe.prepare("embed", BODY)
    want = np.array(job.finish(pipe.execute(job.encodings)))
    toml = f'[pool]\ncpu = 1\n[models.imgup]\nimage = "{embed_image_runc}"\n'
    gw = Gateway(tmp_path, toml, env={"ZEROSTART_CACHE": str(cache)})
    try:
        assert wait_until(lambda: gw.status()["starter"]["pool"]["container"]["ready"] == 1, 120)
        assert gw.status()["starter"]["pool"]["cpu"]["size"] == 0  # no bundle model: no plain slot
        code, headers, body = gw.request("POST", "/models/imgup/embed", BODY)
        assert code == 200, body
        assert headers["zerostart-cold-start"].startswith("warm_slot;"), headers
        np.testing.assert_allclose(np.array(body), want, rtol=0, atol=1e-5)
    finally:
        assert gw.stop() == 0
    from zerostart.container.runtime import STATE_ROOT

    listed = subprocess.run(
        ["runc", "--root", STATE_ROOT, "list", "-q"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert not [c for c in listed.stdout.split() if c.startswith(f"zerostart-slot-{gw.proc.pid}-")]
