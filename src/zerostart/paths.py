"""Containment of names that come from outside: one check for every folder we join them to.

Layer members, bundle manifests, eStargz tables of contents and snapshot
manifests all name files relative to a folder of ours. A name from such a
document is never trusted as a path: it is first cleaned *lexically* by
:func:`relative_name` (no NUL, no ``..`` component, an absolute name refused or
taken as relative to the root, as tar does), and where the folder exists on
this host, :func:`inside` joins it, resolves the symlinks already on disk and
checks the result with :func:`is_within`.

:func:`is_within` is the one place that compares a resolved path with its
root. The separator matters: ``/srv/rootfs-host`` starts with ``/srv/rootfs``
but is not inside it (tests/unit/test_paths.py holds that case).

Standard library only (the worker's cold-start path imports it via
``bundle/folder.py``).
"""

from __future__ import annotations

import os
import re

from zerostart.errors import PathEscapeError

__all__ = ["PathEscapeError", "inside", "is_within", "redact_paths", "relative_name"]


def relative_name(name: str, *, absolute: str = "refuse") -> str:
    """``name`` as a clean relative path (``./a//b/`` -> ``a/b``; the root itself is ``""``).

    ``absolute``: ``"refuse"`` (a manifest names files of its own folder) or
    ``"strip"`` (tar and eStargz: ``/etc/x`` is the root's ``etc/x``).
    Raises :class:`PathEscapeError` for a NUL byte, a ``..`` component, or a
    refused absolute name.
    """
    if "\0" in name:
        raise PathEscapeError(name, "has a NUL byte")
    if name.startswith("/") and absolute != "strip":
        raise PathEscapeError(name, "is absolute; names here are relative to their folder")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathEscapeError(name, "climbs out of its folder with '..'")
    return "/".join(parts)


def is_within(root: str, path: str) -> bool:
    """Whether ``path`` is ``root`` or lies under it; both absolute and already resolved.

    A plain prefix test is wrong: ``root + os.sep`` keeps ``/x/rootfs-host``
    out of ``/x/rootfs``.
    """
    if root == os.sep:
        return path.startswith(os.sep)
    return path == root or path.startswith(root + os.sep)


def inside(root: str | os.PathLike[str], name: str, *, absolute: str = "refuse") -> str:
    """The host path of ``name`` under ``root``, symlinks already on disk resolved.

    ``root`` is resolved too. Raises :class:`PathEscapeError` when ``name`` is
    refused by :func:`relative_name` or resolves outside ``root`` (through a
    symlink, say), and for a symlink loop on the way.
    """
    base = os.path.realpath(root)
    rel = relative_name(name, absolute=absolute)
    joined = os.path.join(base, rel) if rel else base
    try:
        resolved = os.path.realpath(joined, strict=False)
    except OSError as exc:  # ELOOP on Python versions that raise it in non-strict mode
        raise PathEscapeError(name, f"cannot be resolved: {exc.strerror or exc}") from exc
    if not is_within(base, resolved):
        raise PathEscapeError(name, f"resolves to {resolved}, outside {base}")
    return resolved


# An absolute path of two or more components, not part of a URL or of a longer word
# ("http://h:8000/health" and "a/b" are left alone).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:/[^\s/:'\"(),;]+){2,}/?")


def redact_paths(text: str) -> str:
    """``text`` with each absolute path cut to its last component (``…/weights.safetensors``).

    For answers sent to clients: an error from a bundle or an image names files
    by their server paths, which say where and how the server is laid out. The
    full text belongs in the server's log; the answer keeps the file's name.
    """
    return _ABSOLUTE_PATH.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[1], text)
