"""What a GPU container needs from the host, found the way the NVIDIA container toolkit finds it.

An image never carries the NVIDIA driver's user-space libraries: they must
match the host's kernel module exactly. The NVIDIA container toolkit
(``nvidia-container-cli configure``) therefore injects them when a container
starts, reading two variables from the image's environment:

* ``NVIDIA_VISIBLE_DEVICES`` (``all``, ``none`` or GPU indices ``0,1``): which
  ``/dev/nvidiaN`` nodes appear, next to the control nodes ``/dev/nvidiactl``,
  ``/dev/nvidia-uvm``, ``/dev/nvidia-uvm-tools`` (and ``/dev/nvidia-modeset``);
* ``NVIDIA_DRIVER_CAPABILITIES`` (``compute`` for us): which library groups
  are mounted. ``compute`` is ``libcuda.so.1``, ``libnvidia-ptxjitcompiler``
  (PTX fallback), ``libnvidia-nvvm`` and ``libcudadebugger``; ``utility`` adds
  ``libnvidia-ml`` (NVML, what ``nvidia-smi`` uses).

We do the same without the toolkit: each device node becomes an OCI
``linux.devices`` entry plus a cgroup ``allow`` rule with its major/minor, and
each driver library found on the host's library path is bind-mounted
read-only at ``/usr/lib/<multiarch>/<soname>``, a directory ld.so searches
by default, so no ``ldconfig`` has to run inside the read-only image.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass

from zerostart.ldso import default_library_dirs, ld_so_conf_dirs

CONTROL_NODES = (
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
)
CAPABILITY_LIBRARIES = {
    "compute": (
        "libcuda.so.1",
        "libnvidia-ptxjitcompiler.so.1",
        "libnvidia-nvvm.so.4",
        "libcudadebugger.so.1",
    ),
    "utility": ("libnvidia-ml.so.1",),
}
CONTAINER_LIBRARY_DIR = "/usr/lib/x86_64-linux-gnu"
EXTRA_LIBRARY_DIRS = ("/usr/lib/wsl/lib", "/usr/local/nvidia/lib64")


@dataclass(frozen=True)
class DeviceNode:
    path: str
    major: int
    minor: int


@dataclass(frozen=True)
class GpuMounts:
    devices: tuple[DeviceNode, ...]
    libraries: tuple[tuple[str, str], ...]  # (host realpath, container path)

    @property
    def usable(self) -> bool:
        return any(d.path == "/dev/nvidiactl" for d in self.devices) and any(
            c.endswith("/libcuda.so.1") for _, c in self.libraries
        )


def _node(path: str) -> DeviceNode | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISCHR(st.st_mode):
        return None
    return DeviceNode(path, os.major(st.st_rdev), os.minor(st.st_rdev))


def visible_gpu_nodes(visible: str, dev_dir: str = "/dev") -> list[str]:
    """The /dev/nvidiaN paths NVIDIA_VISIBLE_DEVICES selects (indices only; UUIDs need NVML)."""
    all_nodes = sorted(
        (p for p in glob.glob(f"{dev_dir}/nvidia[0-9]*") if os.path.basename(p)[6:].isdigit()),
        key=lambda p: int(os.path.basename(p)[6:]),
    )
    visible = visible.strip()
    if visible in ("", "none", "void"):
        return []
    if visible == "all":
        return all_nodes
    wanted = {f"{dev_dir}/nvidia{i.strip()}" for i in visible.split(",") if i.strip().isdigit()}
    return [p for p in all_nodes if p in wanted]


def find_driver_library(soname: str) -> str | None:
    for d in (*ld_so_conf_dirs(), *EXTRA_LIBRARY_DIRS, *default_library_dirs("x86_64")):
        path = os.path.join(d, soname)
        if os.path.exists(path):
            return os.path.realpath(path)
    return None


def host_gpu_mounts(env: dict[str, str]) -> GpuMounts:
    """Device nodes and driver libraries the image's NVIDIA_* variables ask for, as present here."""
    visible = env.get("NVIDIA_VISIBLE_DEVICES", "all")
    caps = {c.strip() for c in env.get("NVIDIA_DRIVER_CAPABILITIES", "compute").split(",")}
    if "all" in caps:
        caps = set(CAPABILITY_LIBRARIES)
    nodes = [n for p in (*CONTROL_NODES, *visible_gpu_nodes(visible)) if (n := _node(p))]
    libs = []
    for cap in sorted(caps & set(CAPABILITY_LIBRARIES)):
        for soname in CAPABILITY_LIBRARIES[cap]:
            host = find_driver_library(soname)
            if host is not None:
                libs.append((host, f"{CONTAINER_LIBRARY_DIR}/{soname}"))
    return GpuMounts(tuple(nodes), tuple(libs))


def oci_additions(
    mounts: GpuMounts,
) -> tuple[list[dict[str, object]], list[dict[str, object]], list[dict[str, object]]]:
    """(linux.devices, linux.resources.devices allow rules, mounts) for an OCI runtime config."""
    devices: list[dict[str, object]] = []
    rules: list[dict[str, object]] = []
    for d in mounts.devices:
        devices.append(
            {
                "path": d.path,
                "type": "c",
                "major": d.major,
                "minor": d.minor,
                "fileMode": 0o666,
                "uid": 0,
                "gid": 0,
            }
        )
        rules.append(
            {"allow": True, "type": "c", "major": d.major, "minor": d.minor, "access": "rwm"}
        )
    binds: list[dict[str, object]] = [
        {
            "destination": dest,
            "type": "bind",
            "source": host,
            "options": ["bind", "ro", "nosuid", "nodev"],
        }
        for host, dest in mounts.libraries
    ]
    return devices, rules, binds
