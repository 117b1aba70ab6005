"""Bundle.open: verification modes against real converted weights, and tamper detection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from zerostart.bundle.folder import Bundle
from zerostart.bundle.manifest import MANIFEST_NAME, VOCAB_NAME, WEIGHTS_NAME
from zerostart.errors import BundleError
from zerostart.model.convert import convert


@pytest.fixture(scope="module")
def pristine(minilm_sst2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "sst2"
    convert(minilm_sst2_dir, out)
    return out


@pytest.fixture
def bundle_dir(pristine: Path, tmp_path: Path) -> Path:
    """A private copy each test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "sst2"))


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


@pytest.mark.parametrize("verify", ["fast", "full", "none"])
def test_open_maps_weights_and_exposes_the_manifest(bundle_dir: Path, verify: str) -> None:
    b = Bundle.open(bundle_dir, verify=verify)
    assert b.path == bundle_dir and b.vocab_path == bundle_dir / VOCAB_NAME
    assert b.manifest.task == "sequence-classification"
    word = b.weights["embed.word"]
    assert word.shape == (30522, 384) and not word.flags.owndata and not word.flags.writeable
    assert np.shares_memory(word, np.frombuffer(b.weights.buffer, np.uint8))


def test_flipped_weight_bit_fails_full_but_not_fast(bundle_dir: Path) -> None:
    weights = bundle_dir / WEIGHTS_NAME
    _flip_byte(weights, weights.stat().st_size // 2)  # inside tensor data, same size
    Bundle.open(bundle_dir, verify="fast")  # documented: fast does not read tensor data
    with pytest.raises(BundleError, match="sha256 mismatch") as info:
        Bundle.open(bundle_dir, verify="full")
    assert info.value.path == str(weights)
    assert "re-run zerostart convert" in str(info.value)
    b = Bundle.open(bundle_dir, verify="none")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        b.verify_full()


def test_weights_size_change_fails_fast(bundle_dir: Path) -> None:
    weights = bundle_dir / WEIGHTS_NAME
    with open(weights, "ab") as f:
        f.write(b"\0" * 64)
    with pytest.raises(BundleError, match="size is") as info:
        Bundle.open(bundle_dir)
    assert info.value.path == str(weights)


def test_weights_header_edit_fails_fast(bundle_dir: Path) -> None:
    weights = bundle_dir / WEIGHTS_NAME
    raw = bytearray(weights.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + n]
    i = header.index(b"layer.0.attn.qkv.weight")
    header[i : i + 5] = b"layeR"  # same length: only the header digest can tell
    raw[8 : 8 + n] = header
    weights.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="header sha256 mismatch"):
        Bundle.open(bundle_dir)


def test_vocab_edit_fails_fast(bundle_dir: Path) -> None:
    vocab = bundle_dir / VOCAB_NAME
    text = vocab.read_text(encoding="utf-8")
    vocab.write_text(text.replace("[UNK]", "[UNX]", 1), encoding="utf-8")  # same size
    with pytest.raises(BundleError, match="sha256 mismatch") as info:
        Bundle.open(bundle_dir)
    assert info.value.path == str(vocab)
    Bundle.open(bundle_dir, verify="none")


def test_missing_files_and_manifest(bundle_dir: Path) -> None:
    (bundle_dir / VOCAB_NAME).unlink()
    with pytest.raises(BundleError, match="file is missing"):
        Bundle.open(bundle_dir)
    (bundle_dir / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match="not a zerostart bundle"):
        Bundle.open(bundle_dir, verify="none")


def test_weights_in_another_layout_version_are_refused(bundle_dir: Path) -> None:
    weights = bundle_dir / WEIGHTS_NAME
    raw = weights.read_bytes()
    old = b'"zerostart.layout":"1"'
    assert raw.count(old) == 1
    weights.write_bytes(raw.replace(old, b'"zerostart.layout":"0"'))
    with pytest.raises(BundleError, match="engine layout '0'"):
        Bundle.open(bundle_dir, verify="none")


def test_manifest_without_a_header_digest_is_refused_by_fast(bundle_dir: Path) -> None:
    path = bundle_dir / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["files"][WEIGHTS_NAME]["header_sha256"] = ""
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="no header digest"):
        Bundle.open(bundle_dir)
    Bundle.open(bundle_dir, verify="full")


def test_unknown_verify_mode(bundle_dir: Path) -> None:
    with pytest.raises(ValueError, match="verify must be one of"):
        Bundle.open(bundle_dir, verify="sometimes")


def test_a_folder_that_does_not_exist_is_named_as_such(tmp_path: Path) -> None:
    """Not "no manifest: not a bundle", which sends the user looking inside a folder."""
    with pytest.raises(BundleError, match="does not exist") as info:
        Bundle.open(tmp_path / "no-such-bundle")
    assert info.value.path == str(tmp_path / "no-such-bundle")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="is not a folder"):
        Bundle.open(tmp_path / "file")


def test_a_symlink_loop_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(BundleError, match="symbolic links"):
        Bundle.open(tmp_path / "a")


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "kernels/../../x", "a\0b", ".", ""]
)
def test_manifest_file_names_that_leave_the_bundle_are_refused(
    bundle_dir: Path, tmp_path: Path, name: str
) -> None:
    """Before this check, ``../../etc/passwd`` was stat'ed and hashed, and with a wrong size
    the error (and a gateway's 502) read ``…/etc/passwd: size is N bytes``."""
    outside = tmp_path / "secret"
    outside.write_text("root:x:0:0\n")
    path = bundle_dir / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["files"][name] = {"sha256": "0" * 64, "size": 1}
    path.write_text(json.dumps(data))
    for verify in ("fast", "full", "none"):
        with pytest.raises(BundleError, match=r"leaves the bundle|bundle folder itself") as info:
            Bundle.open(bundle_dir, verify=verify)
        assert "size is" not in str(info.value) and info.value.path == str(path)


def test_a_name_inside_the_bundle_is_still_checked(bundle_dir: Path) -> None:
    """Control for the refusal above: a clean extra name is accepted and verified."""
    (bundle_dir / "extra.txt").write_text("x")
    path = bundle_dir / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["files"]["./extra.txt"] = {"sha256": "0" * 64, "size": 2}
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="size is 1 bytes, the manifest says 2"):
        Bundle.open(bundle_dir)
