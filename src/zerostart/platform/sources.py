"""Each model's source checked before the gateway serves it (``zerostart up`` and ``up --check``).

A model whose bundle folder is missing, damaged or a symlink loop would
otherwise be found out by its first request (a 502 with ``retry-after``, and a
back-off). ``up`` refuses to start with such a model, and ``up --check`` says
which one and why, one line per model:

* ``bundle``: the folder exists and opens as a bundle with the worker's own
  default check (``Bundle.open(verify="fast")``: manifest, every file's size,
  small files' and the weights header's sha256; milliseconds per model);
* ``image``: the OCI layout folder exists and its manifest, config and layer
  blobs match their digests and sizes (``read_oci_layout``; the layers are not
  unpacked);
* ``reference``: a registry reference is not fetched here (no network at a
  check); its first start pulls it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from zerostart.errors import ZerostartError
from zerostart.platform.errors import StartError
from zerostart.platform_toml import ConfigError, ModelConfig, PlatformConfig

_BUNDLE_FIX = (
    "point bundle = at a folder made by `zerostart convert`; "
    "relative paths start at platform.toml's folder"
)
_IMAGE_FIX = "point image = at an OCI layout made by `zerostart build`"


@dataclass(frozen=True)
class SourceCheck:
    """The outcome for one model: ``key`` is the dotted key (``models.NAME.bundle``)."""

    model: str
    key: str
    ok: bool
    detail: str
    hint: str | None = None

    def line(self) -> str:
        if self.ok:
            return f"{self.key}: ok: {self.detail}"
        return f"{self.key}: error: {self.detail}" + (f" ({self.hint})" if self.hint else "")


def _folder_problem(path: str) -> str | None:
    """Why ``path`` cannot be a source folder, or None when it is a folder."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path} is a symlink loop (each link points back at another)"
        return f"{path}: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a folder"
    return None


def check_source(model: ModelConfig) -> SourceCheck:
    """Check one model's source as the module docstring says; never raises for a bad source."""
    key = f"models.{model.name}.{model.source_kind}"
    if model.source_kind == "reference":
        return SourceCheck(model.name, key, True, f"{model.source} (registry: pulled at start)")
    if model.source_kind == "image":
        from zerostart.platform.image_start import image_path

        try:
            folder = image_path(model)
        except StartError as exc:
            return SourceCheck(model.name, key, False, exc.problem, exc.hint)
        hint = _IMAGE_FIX
    else:
        folder, hint = model.source, _BUNDLE_FIX
    problem = _folder_problem(folder)
    if problem is not None:
        return SourceCheck(model.name, key, False, problem, hint)
    try:
        if model.source_kind == "bundle":
            from zerostart.bundle.folder import Bundle

            m = Bundle.open(folder, verify="fast").manifest
            detail = f"bundle {m.architecture} {m.task} ({m.device}), {len(m.files)} files checked"
        else:
            from zerostart.container import read_oci_layout

            image = read_oci_layout(folder)
            detail = f"image {image.manifest_digest[:19]}, {len(image.layers)} layers checked"
    except ZerostartError as exc:
        return SourceCheck(model.name, key, False, str(exc), hint)
    except OSError as exc:  # a file of the folder unreadable (permissions, I/O error)
        return SourceCheck(model.name, key, False, f"{folder}: {exc}", hint)
    return SourceCheck(model.name, key, True, detail)


def check_sources(config: PlatformConfig) -> list[SourceCheck]:
    """One :class:`SourceCheck` per model, in name order."""
    return [check_source(config.models[name]) for name in sorted(config.models)]


def require_sources(config: PlatformConfig) -> None:
    """Raise :class:`ConfigError` naming every model whose source fails :func:`check_source`."""
    bad = [c for c in check_sources(config) if not c.ok]
    if len(bad) == 1:
        raise ConfigError(bad[0].key, bad[0].detail, hint=bad[0].hint)
    if bad:
        raise ConfigError(
            bad[0].key,
            bad[0].detail + "; and " + "; ".join(c.line() for c in bad[1:]),
            hint="fix or remove these models; `zerostart up --check` checks them all",
        )
