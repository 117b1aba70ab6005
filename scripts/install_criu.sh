#!/usr/bin/env bash
# Install a working CRIU (4.1.1, built from source) for zerostart snapshots.
#
# Why from source: Debian 12's criu 3.17.1 fails `criu check` on 6.x kernels
# ("vdso: Unexpected rt vDSO area bounds") and Debian 13's binary package needs
# glibc 2.38. The trixie *source* builds fine against bookworm's libraries.
#
# Idempotent: does nothing when `criu --version` reports 4.x and `criu check`
# passes. The built binary is cached under $ZEROSTART_CRIU_CACHE keyed by the
# sha256 of the source tarball, so CI on the same machine reuses it (~0 s
# instead of ~30 s of compilation).
#
# Usage: scripts/install_criu.sh                (as root: apt-get, /usr/local/sbin)
# Env:   ZEROSTART_CRIU_CACHE  cache root (default /var/cache/zerostart)
#        ZEROSTART_CRIU_PREFIX install dir (default /usr/local/sbin)
set -euo pipefail

CRIU_VERSION=4.1.1
CRIU_DEB_VERSION=4.1.1-1
CACHE_ROOT=${ZEROSTART_CRIU_CACHE:-/var/cache/zerostart}
PREFIX=${ZEROSTART_CRIU_PREFIX:-/usr/local/sbin}
MAKE_JOBS=${MAKE_JOBS:-2}
BUILD_DEPS=(
    build-essential patch libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler
    protobuf-compiler python3-protobuf libnl-3-dev libcap-dev libnet1-dev
    libbsd-dev libgnutls28-dev libnftables-dev uuid-dev pkg-config xz-utils
)

# Linux 6.16 made getsockopt(SO_PASSCRED / SO_PASSSEC) fail with EOPNOTSUPP on
# non-unix sockets, so CRIU 4.1.1 cannot dump any process with a TCP socket
# ("sockets: Can't get 1:16 opt: Operation not supported"; upstream issues
# checkpoint-restore/criu#2705 and #2718, fixed after 4.1.1). This patch skips
# options a socket does not have, which is all a listening HTTP server needs.
read -r -d '' PASSCRED_PATCH <<'PATCH' || true
--- a/criu/sockets.c
+++ b/criu/sockets.c
@@ -637,6 +637,20 @@
 	return 0;
 }
 
+/* 0: *val is set; 1: the option does not exist for this socket; -1 (in *ret): error */
+static int getsockopt_passopt(int sk, int name, int *val, int *ret)
+{
+	socklen_t len = sizeof(*val);
+
+	if (getsockopt(sk, SOL_SOCKET, name, val, &len) == 0)
+		return 0;
+	if (errno == EOPNOTSUPP)
+		return 1;
+	pr_perror("Can't get %d:%d opt", SOL_SOCKET, name);
+	*ret |= -1;
+	return 1;
+}
+
 int dump_socket_opts(int sk, SkOptsEntry *soe)
 {
 	int ret = 0, val;
@@ -676,13 +690,20 @@
 	soe->so_reuseport = val ? true : false;
 	soe->has_so_reuseport = true;
 
-	ret |= dump_opt(sk, SOL_SOCKET, SO_PASSCRED, &val);
-	soe->has_so_passcred = true;
-	soe->so_passcred = val ? true : false;
-
-	ret |= dump_opt(sk, SOL_SOCKET, SO_PASSSEC, &val);
-	soe->has_so_passsec = true;
-	soe->so_passsec = val ? true : false;
+	/*
+	 * Linux 6.16 restricted SO_PASS{CRED,SEC} to AF_{UNIX,NETLINK,BLUETOOTH}:
+	 * getsockopt() on other sockets fails with EOPNOTSUPP. Such a socket has
+	 * no such option to restore, so leave it out of the image.
+	 */
+	if (!getsockopt_passopt(sk, SO_PASSCRED, &val, &ret)) {
+		soe->has_so_passcred = true;
+		soe->so_passcred = val ? true : false;
+	}
+
+	if (!getsockopt_passopt(sk, SO_PASSSEC, &val, &ret)) {
+		soe->has_so_passsec = true;
+		soe->so_passsec = val ? true : false;
+	}
 
 	ret |= dump_opt(sk, SOL_SOCKET, SO_DONTROUTE, &val);
 	soe->has_so_dontroute = true;
PATCH

log() { printf 'install_criu: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

criu_ok() {
    # 0 when the criu on PATH is 4.x and `criu check` passes on this kernel.
    command -v criu >/dev/null 2>&1 || return 1
    local version
    version=$(criu --version 2>/dev/null | sed -n 's/^Version: *//p')
    [[ $version == 4.* ]] || return 1
    if [[ $version == 4.0* || $version == 4.1* ]]; then
        # Unpatched <= 4.1.x cannot dump TCP sockets on Linux >= 6.16 (see PASSCRED_PATCH):
        # only our own patched build, identical to the cached one, is good enough.
        local cached
        cached=$(ls "$CACHE_ROOT"/criu-"$CRIU_VERSION"/*/criu 2>/dev/null | head -n1)
        [[ -n $cached ]] && cmp -s "$cached" "$(command -v criu)" || return 1
    fi
    timeout 60 criu check >/dev/null 2>&1
}

if criu_ok; then
    log "criu $(criu --version | sed -n 's/^Version: *//p') already installed and 'criu check' passes: nothing to do"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (apt-get and $PREFIX)"

# Reach Debian's archive through the mirror host this machine is configured with.
mirror_url() {
    local url
    url=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -v security | head -n1 | tr -d ' ')
    echo "${url:-http://deb.debian.org/debian}"
}

install_build_deps() {
    local missing=()
    for pkg in "${BUILD_DEPS[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing build dependencies: ${missing[*]}"
        timeout 600 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

fetch_source() {
    # Download criu_<ver>.orig.tar.xz with apt's own client from a private apt config
    # (trixie deb-src) so the host's sources and state are left untouched.
    local dir=$1 aptdir=$CACHE_ROOT/apt-trixie-src mirror
    mirror=$(mirror_url)
    mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$aptdir/etc/preferences.d" "$aptdir/etc/apt.conf.d"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror%/} trixie main" >"$aptdir/sources.list"
    local opts=(
        -o "Dir::Etc::SourceList=$aptdir/sources.list"
        -o "Dir::Etc::SourceParts=-"
        -o "Dir::Etc::Parts=$aptdir/etc/apt.conf.d"
        -o "Dir::Etc::PreferencesParts=$aptdir/etc/preferences.d"
        -o "Dir::State::Lists=$aptdir/lists"
        -o "Dir::Cache=$aptdir/cache"
        -o "APT::Sandbox::User=root"
    )
    log "fetching criu=$CRIU_DEB_VERSION source from ${mirror%/} (trixie)"
    timeout 600 apt-get "${opts[@]}" update -qq
    # Only the orig tarball is needed (and some mirrors serve only that file), so a
    # failure to fetch the .dsc or the Debian patches is not fatal: the tarball is
    # verified below against the signed Sources index that `update` just checked.
    (cd "$dir" && timeout 600 apt-get "${opts[@]}" source --download-only -qq "criu=$CRIU_DEB_VERSION") \
        || log "apt-get source reported errors (fine if only .dsc/.debian.tar.xz are missing)"
    sources_sha "$(basename "$dir/criu_$CRIU_VERSION.orig.tar.xz")" >"$dir/orig.sha256"
}

sources_sha() {
    # sha256 of a source file as listed in trixie's Sources index (itself verified by apt
    # against the signed InRelease).
    local file=$1 lists=$CACHE_ROOT/apt-trixie-src/lists idx
    idx=$(ls "$lists"/*_trixie_main_source_Sources* 2>/dev/null | head -n1)
    [[ -n $idx ]] || die "no trixie Sources index under $lists"
    # apt-helper decompresses whatever format apt chose for the index (lz4, xz, gz...).
    /usr/lib/apt/apt-helper cat-file "$idx" | awk -v f="$file" '
        /^Package: /{pkg=$2} /^Checksums-Sha256:/{c=1; next} /^[^ ]/{c=0}
        c && pkg=="criu" && $3==f && !done {print $1; done=1}'
}

verify_source() {
    # Check the tarball against the sha256 recorded from the signed Sources index at
    # fetch time, so a cached tarball is verified too.
    local dir=$1 tarball=$2 expected actual
    expected=$(cat "$dir/orig.sha256" 2>/dev/null || true)
    [[ -n $expected ]] || die "no recorded sha256 for $tarball (delete $dir and rerun)"
    actual=$(sha256sum "$tarball" | cut -d' ' -f1)
    [[ $expected == "$actual" ]] || die "sha256 mismatch for $tarball: expected $expected, got $actual"
    echo "$actual"
}

main() {
    local src=$CACHE_ROOT/criu-src tarball sha cached
    mkdir -p "$src"
    tarball=$src/criu_$CRIU_VERSION.orig.tar.xz
    if [[ ! -f $tarball || ! -s $src/orig.sha256 ]]; then
        fetch_source "$src"
    fi
    [[ -f $tarball ]] || die "apt-get source did not produce $tarball"
    sha=$(verify_source "$src" "$tarball")
    log "source verified: sha256 $sha"

    # Key the cached build by the source and the patch, so a changed patch rebuilds.
    local key
    key=$( { echo "$sha"; printf '%s\n' "$PASSCRED_PATCH"; } | sha256sum | cut -c1-64)
    cached=$CACHE_ROOT/criu-$CRIU_VERSION/$key/criu
    if [[ ! -x $cached ]]; then
        install_build_deps
        BUILD_DIR=$(mktemp -d "${TMPDIR:-/tmp}/criu-build.XXXXXX")
        trap 'rm -rf "$BUILD_DIR"' EXIT
        local build=$BUILD_DIR
        tar -xJf "$tarball" -C "$build"
        printf '%s\n' "$PASSCRED_PATCH" | patch -s -p1 -d "$build/criu-$CRIU_VERSION" \
            || die "the SO_PASSCRED patch does not apply to criu $CRIU_VERSION"
        log "building criu $CRIU_VERSION (make -j$MAKE_JOBS criu)"
        local t0=$SECONDS
        timeout 1800 make -C "$build/criu-$CRIU_VERSION" -j"$MAKE_JOBS" criu >"$build/make.log" 2>&1 \
            || { tail -n 40 "$build/make.log" >&2; die "make criu failed (log above)"; }
        log "built in $((SECONDS - t0)) s"
        mkdir -p "$(dirname "$cached")"
        install -m 0755 "$build/criu-$CRIU_VERSION/criu/criu" "$cached.tmp"
        mv "$cached.tmp" "$cached"
    else
        log "reusing cached build $cached"
        # Runtime libraries (libprotobuf-c, libnl, libnet, ...) must still be present.
        install_build_deps
    fi
    install -D -m 0755 "$cached" "$PREFIX/criu"
    hash -r
    log "installed $PREFIX/criu: $("$PREFIX/criu" --version | sed -n 's/^Version: *//p')"
    local out
    out=$(timeout 60 "$PREFIX/criu" check 2>&1) || { echo "$out" >&2; die "'criu check' failed"; }
    echo "$out" | grep -q 'Looks good' || { echo "$out" >&2; die "'criu check' did not say 'Looks good'"; }
    log "criu check: Looks good"
}

main "$@"
