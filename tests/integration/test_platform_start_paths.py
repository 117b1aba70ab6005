"""The start paths in order, with a real CRIU snapshot (root and CRIU; skipped otherwise).

A model with a snapshot is restored; a second replica while the first runs
cannot be (a process snapshot comes back on its recorded port) and takes a
warm slot, saying why; after the model's weights change, or its snapshot's
manifest is tampered with, the start falls through with the check's own
message. The restored and the slot's answers are the same.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from zerostart.platform.pool import WarmPool
from zerostart.platform.starter import PathStarter
from zerostart.platform_toml import ModelConfig
from zerostart.procs import free_port

pytestmark = [pytest.mark.integration, pytest.mark.root]
BODY = {"inputs": ["I love this", "a cat sat on the mat"]}


def _criu_usable() -> str | None:
    if os.geteuid() != 0:
        return "CRIU needs root"
    criu = shutil.which("criu", path=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin")
    if criu is None:
        return "criu not installed (run scripts/install_criu.sh)"
    out = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=60, check=False)
    if "Looks good" not in out.stdout + out.stderr:
        return f"criu check fails here: {(out.stdout + out.stderr).strip()[-200:]}"
    return None


_SKIP = _criu_usable()
if _SKIP:
    pytestmark.append(pytest.mark.skip(reason=_SKIP))


def _embed(port: int) -> np.ndarray:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/embed", data=json.dumps(BODY).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return np.array(json.loads(resp.read()))


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.02)
    return False


def test_snapshot_then_warm_slot_then_fallback_reasons(tmp_path: Path, embed_bundle: Path) -> None:
    from zerostart.snapshot import Warmup, snapshot

    bundle = tmp_path / "minilm"
    shutil.copytree(embed_bundle, bundle)  # this test changes it
    store = tmp_path / "snapshots"
    port = free_port()
    cmd = [sys.executable, "-m", "zerostart.serve", str(bundle), "--port", str(port)]
    snapshot("minilm", cmd, warmup=Warmup("/embed", {"inputs": "hi"}), store=store)
    model = ModelConfig(name="minilm", source=str(bundle))

    async def main() -> None:
        pool = WarmPool({"cpu": 1})
        starter = PathStarter(pool, snapshot_store=store)
        pids: list[int] = []
        try:
            await pool.start()
            await pool.wait_ready("cpu", timeout_s=60)
            restored = await starter.start(model)
            pids.append(restored.pid)
            assert restored.start_path == "snapshot" and restored.port == port
            assert set(restored.phases_ms) == {"restore", "health"}
            second = await starter.start(model)
            pids.append(second.pid)
            assert second.start_path == "warm_slot"
            (fallback,) = second.fallbacks
            assert fallback.path == "snapshot" and f"port {port} is taken" in fallback.reason
            a = await asyncio.to_thread(_embed, restored.port)
            b = await asyncio.to_thread(_embed, second.port)
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
            await restored.stop()
            assert not restored.is_alive()
            await second.stop()

            # the model's weights changed since the snapshot: never restore the old model
            weights = bundle / "weights.safetensors"
            raw = bytearray(weights.read_bytes())
            raw[-5] ^= 0x01  # inside the last tensor's data: the bundle's fast check passes
            weights.write_bytes(bytes(raw))
            await pool.wait_ready("cpu", timeout_s=60)
            changed = await starter.start(model)
            pids.append(changed.pid)
            assert changed.start_path == "warm_slot"
            (fallback,) = changed.fallbacks
            assert fallback.reason.startswith("restore failed:")
            assert "weights.safetensors" in fallback.reason
            await changed.stop()

            # a tampered manifest: refused before CRIU runs, the start falls through
            from zerostart.snapshot._store import snapshot_dir

            manifest = snapshot_dir(store, "minilm") / "manifest.json"
            data = json.loads(manifest.read_text())
            data["cwd"] = "/somewhere/else"
            manifest.write_text(json.dumps(data))
            await pool.wait_ready("cpu", timeout_s=60)
            third = await starter.start(model)
            pids.append(third.pid)
            assert third.start_path == "warm_slot"
            (fallback,) = third.fallbacks
            assert fallback.reason.startswith("unreadable snapshot:")
            assert "edited or damaged" in fallback.reason
            await third.stop()
            assert starter.counts["started.snapshot"] == 1
            assert starter.counts["fallback.snapshot"] == 3
        finally:
            await starter.close()
        assert all(_gone(pid) for pid in pids), "a replica outlived close()"

    asyncio.run(main())
