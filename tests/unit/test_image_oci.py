"""OCI documents and layouts: round trip, digests checked, docker-archive shape, run config policy."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from zerostart.container.gpu import DeviceNode, GpuMounts, oci_additions, visible_gpu_nodes
from zerostart.container.runtime import runtime_config
from zerostart.errors import ImageError
from zerostart.image.layers import Entry, write_layer
from zerostart.image.oci import ImageConfig, write_docker_archive, write_oci_layout
from zerostart.oci import read_oci_layout

CFG = ImageConfig(
    entrypoint=("/usr/local/bin/python3", "-m", "zerostart.serve", "/model"),
    cmd=("--host", "0.0.0.0", "--port", "8080"),
    env=("PYTHONDONTWRITEBYTECODE=1", "NVIDIA_VISIBLE_DEVICES=all"),
    exposed_ports=("8080/tcp",),
    labels=(("zerostart.devices", "cpu"),),
)


def _layers(tmp: Path) -> list:
    return [
        write_layer("runtime", [Entry("/etc/a", "file", data=b"a")], tmp / "blobs"),
        write_layer("model", [Entry("/model/m", "file", data=b"m" * 100)], tmp / "blobs"),
    ]


def test_layout_round_trip(tmp_path: Path) -> None:
    layers = _layers(tmp_path)
    out = tmp_path / "img"
    written = write_oci_layout(out, CFG, layers, {"zerostart.model": "x"}, tag="v1")
    again = write_oci_layout(tmp_path / "img2", CFG, layers, {"zerostart.model": "x"}, tag="v1")
    assert written.manifest_digest == again.manifest_digest
    ref = read_oci_layout(out, tag="v1")
    assert ref.manifest_digest == written.manifest_digest
    assert [la.digest for la in ref.layers] == [la.digest for la in layers]
    cfg = ref.config["config"]
    assert cfg["User"] == "65532:65532" and cfg["ExposedPorts"] == {"8080/tcp": {}}
    assert ref.config["rootfs"]["diff_ids"] == [la.diff_id for la in layers]
    assert ref.manifest["annotations"]["zerostart.model"] == "x"
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}


def test_tampered_blob_is_refused(tmp_path: Path) -> None:
    written = write_oci_layout(tmp_path / "img", CFG, _layers(tmp_path), {})
    blob = tmp_path / "img" / "blobs" / "sha256" / written.config_digest.split(":")[1]
    blob.write_bytes(blob.read_bytes().replace(b"65532", b"00000"))
    with pytest.raises(ImageError, match="does not match its digest"):
        read_oci_layout(tmp_path / "img")


def test_docker_archive_shape(tmp_path: Path) -> None:
    layers = _layers(tmp_path)
    out = write_docker_archive(tmp_path / "x.tar", CFG, layers, repo_tag="zerostart/x:1")
    with tarfile.open(out.path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert manifest[0]["RepoTags"] == ["zerostart/x:1"]
        for name, la in zip(manifest[0]["Layers"], layers, strict=True):
            data = tar.extractfile(name).read()  # type: ignore[union-attr]
            import hashlib

            assert (
                "sha256:" + hashlib.sha256(data).hexdigest() == la.diff_id
            )  # uncompressed, as docker save
        config = json.loads(tar.extractfile(manifest[0]["Config"]).read())  # type: ignore[union-attr]
        assert config["config"]["Entrypoint"][0] == "/usr/local/bin/python3"


def test_runtime_config_policy(tmp_path: Path) -> None:
    written = write_oci_layout(tmp_path / "img", CFG, _layers(tmp_path), {})
    ref = read_oci_layout(written.path)
    spec = runtime_config(ref, "/rootfs", args=["/usr/local/bin/python3", "-V"])
    assert spec["root"] == {"path": "/rootfs", "readonly": True}
    assert spec["process"]["user"] == {"uid": 65532, "gid": 65532}
    assert spec["process"]["noNewPrivileges"] is True
    assert all(not v for v in spec["process"]["capabilities"].values())
    namespaces = {n["type"] for n in spec["linux"]["namespaces"]}
    assert (
        "network" not in namespaces and {"pid", "mount"} <= namespaces
    )  # host loopback, documented
    tmp = [m for m in spec["mounts"] if m["destination"] == "/tmp"]
    assert tmp and tmp[0]["type"] == "tmpfs"


def test_gpu_additions_follow_the_toolkit(tmp_path: Path) -> None:
    mounts = GpuMounts(
        devices=(DeviceNode("/dev/nvidiactl", 195, 255), DeviceNode("/dev/nvidia0", 195, 0)),
        libraries=(
            (
                "/usr/lib/x86_64-linux-gnu/libcuda.so.535.1",
                "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
            ),
        ),
    )
    assert mounts.usable
    devices, rules, binds = oci_additions(mounts)
    assert {(d["path"], d["major"], d["minor"]) for d in devices} == {
        ("/dev/nvidiactl", 195, 255),
        ("/dev/nvidia0", 195, 0),
    }
    assert all(r["allow"] and r["access"] == "rwm" for r in rules)
    assert binds[0]["destination"].endswith("/libcuda.so.1") and "ro" in binds[0]["options"]
    for name in ("nvidia0", "nvidia1", "nvidia10", "nvidiactl"):
        (tmp_path / name).write_bytes(b"")
    assert visible_gpu_nodes("all", str(tmp_path)) == [
        str(tmp_path / n) for n in ("nvidia0", "nvidia1", "nvidia10")
    ]
    assert visible_gpu_nodes("1", str(tmp_path)) == [str(tmp_path / "nvidia1")]
    assert visible_gpu_nodes("none", str(tmp_path)) == []
