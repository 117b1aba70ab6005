#!/usr/bin/env bash
# The GPU session, on the lent GPU machine: one call of the device tool runs it all.
#
# Prepare on the CPU machine first (docs/gpu.md):   python tools/gpu_prep.py
# Then, from the repository root, as the device tool's command:
#     bash scripts/gpu_session.sh            (carry: [".gpu"], timeout_s: 600)
# Every step's log and result lands in $OUT (session.log, summary.json,
# pytest.xml, gpu_bench.json, image.json, snapshot.json) as soon as it ends.
# Steps can be chosen: GPU_STEPS=pytest,bench bash scripts/gpu_session.sh
set -u
OUT=${OUT:-$PWD/.gpu-out}
mkdir -p "$OUT"
if [ ! -f .gpu/prep.json ]; then
    echo "no .gpu/prep.json: run tools/gpu_prep.py on the CPU machine and carry .gpu" | tee "$OUT/session.log"
    exit 2
fi
PY=${PYTHON:-python3}
site=$PWD/.gpu/site  # not under /tmp: the image builder leaves /tmp/* out of images
rm -rf "$site" /tmp/zs-criu
if ls .gpu/wheels/*.whl >/dev/null 2>&1; then
    # httptools (the worker's HTTP parser) is not on the GPU machine; nothing can be downloaded there.
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .gpu/wheels/*.whl \
        >>"$OUT/session.log" 2>&1 || echo "wheel install failed (see session.log)"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -f .gpu/criu.tar.xz ]; then  # CRIU + its libraries (the machine has none); python's tarfile reads xz
    "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
        .gpu/criu.tar.xz /tmp/zs-criu && export ZEROSTART_CRIU=/tmp/zs-criu/criu/criu
fi
if [ "${ZEROSTART_GPU_DRYRUN:-}" = 1 ]; then
    # No GPU here: every process gets tests/fake_libcuda.py instead of libcuda (tests/dryrun/).
    export PYTHONPATH="$PWD/tests/dryrun${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" tools/gpu_session.py --out "$OUT" ${GPU_STEPS:+--steps "$GPU_STEPS"}
