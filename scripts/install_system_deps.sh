#!/usr/bin/env bash
# System tools that the image, snapshot and registry tests need, from Debian 12.
#
# Idempotent: packages already present are left alone and apt-get is not even
# called when nothing is missing. Run as root (CI runs as root); elsewhere it
# prints what is missing and exits 0 so that tests skip with their own reasons.
#
#   runc             OCI runtime that `zerostart run` uses (crun 1.8.1 refuses
#                    hybrid cgroup hosts; we probe both and pick what works)
#   skopeo, umoci    independent checks that our OCI layout / docker-archive are valid
#   podman           optional third opinion; not required by any test
#   docker-registry  a real registry on 127.0.0.1 for push/pull tests
#   apache2-utils    htpasswd -B: bcrypt password file for the registry auth test
#   strace           tracing helpers and debugging of the traced worker
#   fuse3            lazy image filesystem (imagefs): fusermount3, /dev/fuse helpers
#   libfuse3-dev, pkg-config  to build pyfuse3 (the dev/imagefs extra ships no wheel)
#   golang-go, golang-github-containerd-stargz-snapshotter-dev
#                    the reference eStargz implementation (Go sources) and the
#                    compiler that builds tests/interop/estargz_ref offline
#   stargz-snapshotter  ctr-remote and the eStargz spec under /usr/share/doc
#   gcc              compiles the native CPU kernels at `zerostart convert` (build time
#                    only, never in an image; docs/cpu.md) and in the kernel tests
#   hey              HTTP load generator: the gateway's 10,000-request test (platform)
#   chromium, chromium-driver  a real headless browser for the gateway's status page test
#   zstd             zstd and pzstd: the zstd layers of the zTOC tests (one frame, many frames)
set -euo pipefail

REQUIRED=(runc crun skopeo umoci docker-registry apache2-utils strace fuse3 libfuse3-dev pkg-config
    golang-go golang-github-containerd-stargz-snapshotter-dev stargz-snapshotter hey gcc chromium chromium-driver zstd)
OPTIONAL=(podman)

missing() {
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            echo "$pkg"
        fi
    done
}

mapfile -t need < <(missing "${REQUIRED[@]}")
mapfile -t want < <(missing "${OPTIONAL[@]}")
if [ "${#need[@]}" -eq 0 ] && [ "${#want[@]}" -eq 0 ]; then
    echo "install_system_deps: all present (${REQUIRED[*]} ${OPTIONAL[*]})"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_system_deps: not root; missing: ${need[*]} ${want[*]} (tests that need them will skip)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
if [ "${#need[@]}" -gt 0 ]; then
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "${#want[@]}" -gt 0 ]; then
    # podman pulls in a lot; a failure here must not fail CI.
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${want[@]}" >/dev/null \
        || echo "install_system_deps: optional ${want[*]} not installed" >&2
fi
echo "install_system_deps: installed ${need[*]} ${want[*]}"
