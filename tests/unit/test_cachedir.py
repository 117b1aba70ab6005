"""Every part's cache folder follows the one rule of zerostart/cachedir.py (it had drifted:
the image builder ignored $ZEROSTART_CACHE, imagefs and the runner ignored $XDG_CACHE_HOME)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zerostart.cachedir import cache_base
from zerostart.container.runtime import default_cache_dir as runner_cache
from zerostart.image.build import BuildOptions
from zerostart.imagefs.mount import default_cache_dir as imagefs_cache
from zerostart.kernels.blas_build import cache_root as blas_cache
from zerostart.kernels.cpu_build import cache_root as kernels_cache


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
