"""The `zerostart` command line.

Each subcommand imports what it needs when it runs, so `zerostart --help` is
instant and `zerostart serve` pays for nothing but the worker. Library code
raises typed errors; this module alone decides how they are shown: one line
naming the problem and the fix, a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from zerostart import __version__
from zerostart.errors import ZerostartError
from zerostart.progress import Progress

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def restore_signal_dispositions() -> None:
    """Take back SIGINT and SIGTERM when this process inherited them as ignored.

    A shell without job control starts a background job (``cmd &`` in a script,
    a CI step) with SIGINT and SIGQUIT ignored (POSIX, Shell Command Language
    2.11), an ignored signal stays ignored across ``exec``, and Python installs
    its ``KeyboardInterrupt`` handler only when SIGINT was at its default. Then
    ``kill -INT`` did nothing to `zerostart run --lazy`: its cleanup (container,
    overlay, FUSE mount, work folder) never ran, and the children it starts
    (runc, the imagefs daemon) inherited the ignored signal too. Every command
    of this CLI relies on Ctrl-C unwinding through ``finally``; so SIGINT gets
    Python's handler back, and an ignored SIGTERM its default (commands that
    need cleanup on SIGTERM install ``cli/_signals.py``'s ``sigterm_as_interrupt``). SIGPIPE is
    left as Python sets it (ignored here, so a closed pipe is an ``OSError``;
    ``subprocess`` restores it for children). SIGHUP is left alone: ``nohup``
    ignores it on purpose.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _cmd_convert(args: argparse.Namespace) -> int:
    from zerostart.model.convert import convert

    t0 = time.perf_counter()
    manifest = convert(
        args.src,
        args.dst,
        device=args.device,
        task=args.task,
        max_length=args.max_length,
        progress=None if args.quiet else Progress(),
        archs=[a.strip() for a in args.arch.split(",") if a.strip()],
        allow_nonfinite=args.allow_nonfinite,
        name=args.name,
        cpu_archs=None if args.cpu_arch is None else [a.strip() for a in args.cpu_arch.split(",")],
        precision=args.precision,
        gemm_tuning=args.gemm_tuning,
    )
    weights = manifest.files.get("weights.safetensors")
    size_mb = weights.size / 1e6 if weights else 0.0
    print(
        f"converted {args.src} -> {args.dst} in {time.perf_counter() - t0:.1f}s: "
        f"{manifest.architecture} {manifest.task}, {len(manifest.labels)} labels, "
        f"{manifest.dtype} weights {size_mb:.1f} MB, max_length {manifest.max_length}"
    )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from zerostart.bundle.folder import Bundle

    t0 = time.perf_counter()
    bundle = Bundle.open(args.bundle, verify="full" if args.verify else "fast")
    elapsed = time.perf_counter() - t0
    m = bundle.manifest
    if args.json:
        print(m.to_json(), end="")
        return 0
    cfg = m.config
    print(f"bundle      {bundle.path}")
    print(f"model       {m.architecture} · {m.task} · {m.dtype} · device {m.device}")
    print(
        f"shape       {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads, "
        f"FFN {cfg.intermediate_size}, vocab {cfg.vocab_size}"
    )
    print(f"max length  {m.max_length} tokens")
    if m.labels:
        shown = ", ".join(m.labels[:8]) + (
            f", … ({len(m.labels)} in all)" if len(m.labels) > 8 else ""
        )
        print(f"labels      {shown}")
    if m.task == "embeddings":
        print(f"pooling     {m.pooling.mode}, normalize by default: {m.pooling.normalize}")
    if m.task == "sequence-classification":
        print(f"problem     {m.problem_type}")
    for name, entry in sorted(m.files.items()):
        print(f"file        {name:<22} {entry.size / 1e6:9.2f} MB  sha256 {entry.sha256[:16]}…")
    what = "every file's sha256 verified" if args.verify else "sizes and small files verified"
    print(f"check       {what} in {elapsed * 1e3:.1f} ms")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from zerostart.benchmark import run_bench

    result = run_bench(
        args.bundle,
        cold_runs=args.cold_runs,
        warm_iters=args.iters,
        seq_len=args.seq_len,
        batch=args.batch,
        progress=Progress(),
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zerostart",
        description=(
            "Serve BERT-family models (classification, token classification, embeddings) "
            "from zero replicas to a first answer in well under a second."
        ),
        epilog="Run `zerostart COMMAND --help` for a command's options.",
    )
    p.add_argument("--version", action="version", version=f"zerostart {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser(
        "convert",
        help="turn a Hugging Face model folder into a zerostart bundle",
        description=(
            "Read a Hugging Face model folder (config.json, tokenizer files, model.safetensors "
            "or pytorch_model.bin) and write a bundle: manifest, weights in engine layout "
            "(one aligned safetensors file the worker maps with mmap) and vocabulary."
        ),
    )
    c.add_argument("src", help="Hugging Face model folder")
    c.add_argument("dst", help="bundle folder to create (must not exist, or be a bundle)")
    c.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu: fp32; cuda: fp16")
    c.add_argument(
        "--task",
        choices=["sequence-classification", "token-classification", "embeddings"],
        help="override the task inferred from config.json's architectures",
    )
    c.add_argument(
        "--arch",
        default="",
        help="GPU archs to compile kernels for with --device cuda, e.g. sm_86,sm_90 (needs Triton; no GPU needed)",
    )
    c.add_argument(
        "--gemm-tuning",
        metavar="FILE",
        help="GPU: GEMM block configs measured by tools/gpu_tune.py on the target GPU "
        "(default: the results shipped for the --arch values, src/zerostart/kernels/tuning/)",
    )
    c.add_argument(
        "--cpu-arch",
        help="CPU targets to compile the native kernels for (gcc -march names, +ext allowed), e.g. "
        "x86-64,x86-64-v3,x86-64-v4 (the default for float32); 'none': numpy engine, no compiler",
    )
    c.add_argument(
        "--precision",
        choices=["float32", "int8", "bfloat16"],
        default="float32",
        help="CPU matrix weights: int8 needs AVX-512 VNNI or AVX2, bfloat16 AVX-512 BF16 (docs/cpu.md)",
    )
    c.add_argument("--max-length", type=int, help="longest input in tokens (default: the model's)")
    c.add_argument(
        "--name",
        help="the model's name as clients see it (/info model_id, OpenAI model); default: DST's folder name",
    )
    c.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    c.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="convert weights holding NaN or infinity anyway (warns; the worker answers 424)",
    )
    c.set_defaults(func=_cmd_convert)

    sub.add_parser(
        "serve",
        help="run the HTTP inference worker for a bundle (`zerostart serve --help`)",
        add_help=False,
    )

    i = sub.add_parser("info", help="describe a bundle and check its files")
    i.add_argument("bundle")
    i.add_argument("--verify", action="store_true", help="check every file's sha256")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=_cmd_info)

    b = sub.add_parser(
        "bench",
        help="measure cold start, warm latency and throughput of a bundle",
        description=(
            "Cold start (process exec -> first correct HTTP answer, with the worker's own "
            "phase breakdown), warm latency and throughput of the engine on this machine. "
            "Comparisons with PyTorch and ONNX Runtime live in the repository's bench/ folder."
        ),
    )
    b.add_argument("bundle")
    b.add_argument("--cold-runs", type=int, default=5, help="cold starts to time (default 5)")
    b.add_argument("--iters", type=int, default=20, help="warm iterations (default 20)")
    b.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    b.add_argument("--batch", type=int, default=32, help="throughput batch size (default 32)")
    b.add_argument("--json", help="also write the result to this JSON file")
    b.set_defaults(func=_cmd_bench)

    # Image, registry and snapshot commands live beside their code.
    from zerostart.cli.image import add_subcommands as add_image
    from zerostart.cli.imagefs import add_subcommands as add_imagefs
    from zerostart.cli.index import add_subcommands as add_index
    from zerostart.cli.platform import add_subcommands as add_platform
    from zerostart.cli.registry import add_subcommands as add_registry
    from zerostart.cli.snapshot import add_subcommands as add_snapshot

    for add in (add_image, add_registry, add_snapshot, add_imagefs, add_platform, add_index):
        add(sub)
    from zerostart.cli.fleet import add_parsers as add_fleet  # fleet plan|simulate|trace, deploy

    add_fleet(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    restore_signal_dispositions()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = argv[:1] == ["--debug"]
    if argv[debug : debug + 1] == ["serve"]:
        # The worker parses its own options: one definition for `zerostart serve` and
        # `python -m zerostart.serve` (the image entrypoint), and no CLI imports on its path.
        from zerostart.serve.__main__ import main as serve_main

        return serve_main(argv[debug + 1 :], prog="zerostart serve", debug=debug)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except ZerostartError as exc:
        if args.debug:
            raise
        print(f"zerostart {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"zerostart {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        if args.debug:
            raise
        print(f"zerostart {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
