"""The local OCI layout is checked too: on push before a byte is sent, on pull before a blob is trusted.

A real registry (Debian's docker-registry on loopback) and real layouts from
the round-trip tests' builder. The registry's access log is the witness that a
refused push sent nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_server import RegistryServer, registry_binary, running_registry
from test_registry import assert_same_image, make_layout

from zerostart.registry import client as reg
from zerostart.registry.errors import ImageLayoutError, RegistryError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        registry_binary() is None,
        reason="docker-registry not installed (apt-get install docker-registry)",
    ),
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with running_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


def _blob(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.split(":", 1)[1]


def _sent_nothing(registry: RegistryServer, repository: str) -> bool:
    return sum(registry.requests(m, f"/v2/{repository}/") for m in ("POST", "PATCH", "PUT")) == 0


def test_a_damaged_local_blob_is_fetched_again(registry: RegistryServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    digests = make_layout(src, seed=11)
    ref = f"{registry.address}/lr/refetch:1"
    reg.push(src, ref)
    out = tmp_path / "out"
    assert reg.pull(ref, out).blobs_downloaded == 2
    assert reg.pull(ref, out).blobs_present == 2  # control: intact blobs are not fetched again
    layer = _blob(out, digests["layer"])
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the digest can tell
    layer.write_bytes(bytes(data))
    again = reg.pull(ref, out)
    assert (again.blobs_downloaded, again.blobs_present) == (1, 1)
    assert_same_image(src, out, digests["manifest"])


def test_push_refuses_a_layout_manifest_that_does_not_match_its_digest(
    registry: RegistryServer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    digests = make_layout(src, seed=12)
    manifest = _blob(src, digests["manifest"])
    text = manifest.read_text()
    assert '"schemaVersion": 2' in text
    manifest.write_text(text.replace('"schemaVersion": 2', '"schemaVersion": 3'))  # same size
    with pytest.raises(ImageLayoutError, match=f"does not match {digests['manifest']}"):
        reg.push(src, f"{registry.address}/lr/badmanifest:1")
    assert _sent_nothing(registry, "lr/badmanifest")


def test_push_refuses_a_truncated_layer_blob(registry: RegistryServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    digests = make_layout(src, seed=13)
    layer = _blob(src, digests["layer"])
    size = layer.stat().st_size
    layer.write_bytes(layer.read_bytes()[:-100])
    with pytest.raises(ImageLayoutError, match=f"{size - 100} bytes, descriptor says {size}"):
        reg.push(src, f"{registry.address}/lr/truncated:1")
    assert digests["layer"] not in registry.log()  # refused before even asking the registry


def test_a_digest_with_a_path_in_it_is_refused(registry: RegistryServer, tmp_path: Path) -> None:
    """``sha256:../../x`` in index.json must not become a path out of the layout."""
    src = tmp_path / "src"
    make_layout(src, seed=14)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"schemaVersion": 2, "layers": []}))
    index = json.loads((src / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha256:../../../outside.json"
    index["manifests"][0]["size"] = outside.stat().st_size
    (src / "index.json").write_text(json.dumps(index))
    with pytest.raises(RegistryError, match="only sha256 is supported"):
        reg.push(src, f"{registry.address}/lr/escape:1")
    assert _sent_nothing(registry, "lr/escape")
