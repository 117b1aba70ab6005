"""The anchor: a plain PyTorch + transformers server, the way most users would write one.

`python bench/anchors/torch_server.py MODEL_DIR --port N` answers the same
routes and JSON as the zerostart worker for the sample requests in
zerostart.benchmark (/predict, /embed, /tokens), using transformers'
pipelines (and mean pooling + normalisation for sentence-transformers
embedding folders). Used only by the benchmarks; never part of zerostart.
"""

from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(model_dir: str, device: str = "cpu"):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer, pipeline

    config = AutoConfig.from_pretrained(model_dir)
    arch = (config.architectures or [""])[0]
    if arch.endswith("ForSequenceClassification"):
        pipe = pipeline("text-classification", model=model_dir, top_k=None, device=device)

        def predict(body):  # type: ignore[no-untyped-def]
            out = pipe(body["inputs"])
            # A single text comes back wrapped in a list; answer TEI's shape.
            return (
                out[0]
                if isinstance(body["inputs"], str) and out and isinstance(out[0], list)
                else out
            )

        return "/predict", predict
    if arch.endswith("ForTokenClassification"):
        pipe = pipeline(
            "token-classification", model=model_dir, aggregation_strategy="simple", device=device
        )
        return "/tokens", lambda body: [
            {**e, "score": float(e["score"])} for e in pipe(body["inputs"])
        ]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval().to(device)
    mean = True
    pooling = Path(model_dir) / "1_Pooling" / "config.json"
    if pooling.exists():
        mean = bool(json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", True))

    def embed(body):  # type: ignore[no-untyped-def]
        texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
        enc = tok(texts, padding=True, truncation=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        if mean:
            m = enc["attention_mask"].unsqueeze(-1).float()
            vec = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        else:
            vec = hidden[:, 0]
        vec = torch.nn.functional.normalize(vec, dim=-1)
        return vec.tolist()

    return "/embed", embed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (transformers' pipeline device)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    route, handler = build(args.model_dir, args.device)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:  # type: ignore[no-untyped-def]
            pass

        def _send(self, code: int, obj) -> None:  # type: ignore[no-untyped-def]
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200 if self.path == "/health" else 404, {})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if self.path != route:
                self._send(404, {"error": f"this server serves {route}"})
                return
            self._send(200, handler(body))

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
