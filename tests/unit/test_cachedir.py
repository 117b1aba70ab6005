"""Every part's cache folder follows the one rule of zerostart/cachedir.py (it had drifted:
the image builder ignored $ZEROSTART_CACHE, imagefs and the runner ignored $XDG_CACHE_HOME)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from zerostart.cachedir import cache_base, state_base
from zerostart.container.runtime import default_cache_dir as runner_cache
from zerostart.image.build import BuildOptions
from zerostart.imagefs.mount import default_cache_dir as imagefs_cache
from zerostart.kernels.blas_build import cache_root as blas_cache
from zerostart.kernels.cpu_build import cache_root as kernels_cache
from zerostart.snapshot import default_store, list_snapshots


def _all() -> list[Path]:
    return [
        runner_cache(),
        Path(BuildOptions().cache_dir),
        imagefs_cache().parent,
        blas_cache().parent,
        kernels_cache().parent,
    ]


def test_every_cache_folder_honours_zerostart_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZEROSTART_CACHE", str(tmp_path / "zc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_base() == tmp_path / "zc"
    assert _all() == [tmp_path / "zc"] * 5


def test_without_it_every_cache_folder_is_under_xdg_cache_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ZEROSTART_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _all() == [tmp_path / "xdg" / "zerostart"] * 5
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _all() == [tmp_path / "home" / ".cache" / "zerostart"] * 5


# -- state: what zerostart cannot rebuild (a user's snapshots, the gateway's worker key) ------


def _as_user(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """A non-root user with only HOME set (these tests run as root in CI)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for var in ("ZEROSTART_SNAPSHOTS", "XDG_STATE_HOME", "XDG_CACHE_HOME", "ZEROSTART_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))


def test_state_base_follows_xdg_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _as_user(monkeypatch, tmp_path / "home")
    assert state_base() == tmp_path / "home" / ".local" / "state" / "zerostart"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert state_base() == tmp_path / "state" / "zerostart"


def test_a_users_snapshots_are_state_not_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _as_user(monkeypatch, tmp_path / "home")
    assert default_store() == tmp_path / "home" / ".local" / "state" / "zerostart" / "snapshots"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_store() == tmp_path / "state" / "zerostart" / "snapshots"
    # deleting the cache (always safe, cachedir.py says) must not delete snapshots
    assert not default_store().is_relative_to(cache_base())
    monkeypatch.setenv("ZEROSTART_SNAPSHOTS", str(tmp_path / "elsewhere"))
    assert default_store() == tmp_path / "elsewhere"


def test_roots_snapshots_are_system_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv("ZEROSTART_SNAPSHOTS", raising=False)
    assert default_store() == Path("/var/lib/zerostart/snapshots")


def test_snapshots_in_the_old_cache_folder_are_still_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    _as_user(monkeypatch, home)
    legacy = home / ".cache" / "zerostart" / "snapshots"
    (legacy / "snapshots" / "old-one").mkdir(parents=True)
    (legacy / "snapshots" / "old-one" / "manifest.json").write_text("{}")  # what --list looks for
    with caplog.at_level(logging.WARNING, logger="zerostart.snapshot"):
        assert default_store() == legacy
        assert list_snapshots(default_store()) == ["old-one"]
    warnings = [r.getMessage() for r in caplog.records if "snapshot_store_legacy" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per process, not once per call
    assert f"mv {legacy} {home / '.local' / 'state' / 'zerostart' / 'snapshots'}" in warnings[0]
    # once the user moved them (or the new store exists), the new place wins
    new = home / ".local" / "state" / "zerostart" / "snapshots"
    legacy.rename(new.parent.mkdir(parents=True) or new)
    assert default_store() == new
    assert list_snapshots(default_store()) == ["old-one"]
