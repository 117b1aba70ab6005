"""The lean anchor: ONNX Runtime + `tokenizers`, no framework, the stack a careful user picks.

`python bench/anchors/onnx_server.py MODEL_DIR ONNX_FILE --port N` loads the
model exported to ONNX (``export`` below, done once before any timing) and
the folder's ``tokenizer.json`` with Hugging Face `tokenizers`, and answers
the benchmark's sample requests (zerostart.benchmark) with the same routes
and JSON as the zerostart worker: ``/predict`` (softmax over labels),
``/embed`` (sentence-transformers pooling + normalisation), ``/tokens``
(transformers' "simple" aggregation). One thread for ONNX Runtime, as the
warm benchmark's anchors; the HTTP server is the standard library's, as
bench/anchors/torch_server.py's. Used only by the benchmarks; never part of
zerostart.

    python bench/anchors/onnx_server.py --export MODEL_DIR OUT.onnx   # torch, once
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

ONNX_OPSET = 17


def export(model_dir: str, out: str) -> None:
    """Export the Hugging Face folder's model to ONNX (dynamic batch and sequence axes)."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    config = AutoConfig.from_pretrained(model_dir)
    arch = (config.architectures or [""])[0]
    cls = (
        AutoModelForSequenceClassification
        if arch.endswith("ForSequenceClassification")
        else AutoModelForTokenClassification
        if arch.endswith("ForTokenClassification")
        else AutoModel
    )
    model = cls.from_pretrained(model_dir, attn_implementation="eager").eval()
    ids = torch.ones((1, 8), dtype=torch.int64)
    names = ["input_ids", "attention_mask"]
    axes = {n: {0: "batch", 1: "seq"} for n in [*names, "output"]}
    wrapped = _Outputs(model)
    torch.onnx.export(
        wrapped,
        (ids, torch.ones_like(ids)),
        out,
        input_names=names,
        output_names=["output"],
        dynamic_axes=axes,
        opset_version=ONNX_OPSET,
        dynamo=False,
    )


class _Outputs:  # a torch.nn.Module made at export time (torch is imported there only)
    def __new__(cls, model):  # type: ignore[no-untyped-def]
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
                out = self.model(input_ids=input_ids, attention_mask=attention_mask)
                return out.logits if hasattr(out, "logits") else out.last_hidden_state

        return Wrapped()


def build(model_dir: str, onnx_file: str):  # type: ignore[no-untyped-def]
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_file, opts, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    config = json.loads((Path(model_dir) / "config.json").read_text())
    arch = (config.get("architectures") or [""])[0]
    labels = [
        config.get("id2label", {}).get(str(i)) for i in range(len(config.get("id2label", {})))
    ]

    def run(texts: list[str]):  # type: ignore[no-untyped-def]
        tok.enable_padding()
        encs = tok.encode_batch(texts)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        (out,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        return encs, mask, out

    def softmax(x):  # type: ignore[no-untyped-def]
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    if arch.endswith("ForSequenceClassification"):

        def predict(body):  # type: ignore[no-untyped-def]
            _, _, logits = run([body["inputs"]])
            scores = softmax(logits[0])
            order = np.argsort(-scores, kind="stable")
            return [{"label": labels[i], "score": float(scores[i])} for i in order]

        return "/predict", predict
    if arch.endswith("ForTokenClassification"):

        def tokens(body):  # type: ignore[no-untyped-def]
            text = body["inputs"]
            (enc,), _, logits = run([text])
            scores = softmax(logits[0])
            entities = []
            for i, (special, (a, b)) in enumerate(
                zip(enc.special_tokens_mask, enc.offsets, strict=True)
            ):
                if special:
                    continue
                k = int(scores[i].argmax())
                entities.append((labels[k], float(scores[i][k]), a, b))
            groups: list[list[tuple[str, float, int, int]]] = []
            for e in entities:  # transformers' group_entities: B- opens, same tag continues
                bi, tag = (e[0][:1], e[0][2:]) if e[0][:2] in ("B-", "I-") else ("I", e[0])
                if groups:
                    last = groups[-1][-1][0]
                    last_tag = last[2:] if last[:2] in ("B-", "I-") else last
                    if tag == last_tag and bi != "B":
                        groups[-1].append(e)
                        continue
                groups.append([e])
            answer = []
            for g in groups:
                group = g[0][0].split("-", 1)[-1]
                if group == "O":
                    continue
                start, end = g[0][2], g[-1][3]
                answer.append(
                    {
                        "entity_group": group,
                        "score": float(np.mean([e[1] for e in g])),
                        "word": text[start:end],
                        "start": start,
                        "end": end,
                    }
                )
            return answer

        return "/tokens", tokens
    mean = True
    pooling = Path(model_dir) / "1_Pooling" / "config.json"
    if pooling.exists():
        mean = bool(json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", True))

    def embed(body):  # type: ignore[no-untyped-def]
        texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
        _, mask, hidden = run(texts)
        if mean:
            m = mask[:, :, None].astype(np.float32)
            vec = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        else:
            vec = hidden[:, 0]
        vec = vec / np.maximum(np.linalg.norm(vec, axis=-1, keepdims=True), 1e-12)
        return vec.tolist()

    return "/embed", embed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("onnx_file")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--export", action="store_true", help="export MODEL_DIR to ONNX_FILE and exit")
    args = ap.parse_args()
    if args.export:
        export(args.model_dir, args.onnx_file)
        return
    route, handler = build(args.model_dir, args.onnx_file)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if self.path != route:
                self.send_error(404)
                return
            data = json.dumps(handler(body)).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer((args.host, args.port), Handler)
    print(f"listening on {args.host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
