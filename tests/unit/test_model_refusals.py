"""A bundle manifest of another format version is refused, naming the fix.

The bundle is a real converted model; only its manifest is rewritten, in a
folder that links the real weights and vocabulary (no copy of the weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zerostart.bundle.folder import Bundle
from zerostart.bundle.manifest import FORMAT_VERSION, MANIFEST_NAME, VOCAB_NAME, WEIGHTS_NAME
from zerostart.errors import BundleError


def _with_manifest(bundle: Path, out: Path, edit: dict[str, object]) -> Path:
    out.mkdir()
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    for name in (WEIGHTS_NAME, VOCAB_NAME, *data.get("files", {})):  # kernels/… too
        if name != MANIFEST_NAME and not (out / name).exists():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).symlink_to(bundle / name)
    (out / MANIFEST_NAME).write_text(json.dumps({**data, **edit}))
    return out


def test_manifest_of_another_format_version_is_refused(sst2_bundle: Path, tmp_path: Path) -> None:
    same = _with_manifest(sst2_bundle, tmp_path / "same", {"format_version": FORMAT_VERSION})
    assert Bundle.open(same).manifest.format_version == FORMAT_VERSION  # control
    newer = _with_manifest(sst2_bundle, tmp_path / "newer", {"format_version": FORMAT_VERSION + 1})
    with pytest.raises(BundleError, match=f"format version {FORMAT_VERSION + 1} is not supported"):
        Bundle.open(newer, verify="none")
