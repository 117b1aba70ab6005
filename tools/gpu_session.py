"""The GPU session, run on the lent GPU machine by scripts/gpu_session.sh: every step, in order.

Each step runs as its own process with its own time limit; its output is
appended to ``OUT/session.log`` and its outcome to ``OUT/summary.json`` as
soon as it ends, so a later step's failure (or the whole call running out of
time) loses nothing already done. Steps:

    env       what the machine is: GPU, driver, Python packages, CRIU (never fails the run)
    pytest    pytest -m gpu tests/gpu -v on the carried models (and ModernBERT's fixture, when
              carried: tests/gpu/test_gpu_families.py); any skip is a failure
    tune      tools/gpu_tune.py: every carried GEMM config timed per shape -> OUT/tuning.json
    bench     bench/gpu.py with the carried bert-base kernels (and OUT/tuning.json when the
              tune step wrote one: tuned and untuned rule side by side) -> OUT/gpu_bench.json
    image     the warmed GPU worker traced and built into an OCI image -> OUT/image.json
    snapshot  bench/snapshot.py on the GPU: zerostart worker and PyTorch server,
              boot vs restore (CRIU + CUDA checkpoint) -> OUT/snapshot.json

What comes back from the machine is at most 8 files, so everything lands in
these: session.log, summary.json, pytest.xml, and the step JSONs.

    python3 tools/gpu_session.py --out DIR [--steps env,pytest,bench,image,snapshot]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / ".gpu"
IMAGE_DIR = "/tmp/zs-gpu-image"
STEPS = ("env", "pytest", "tune", "bench", "image", "snapshot")
# Seconds per step: together well inside one 10-minute call, leaving room for the start.
LIMITS_S = {"env": 60, "pytest": 150, "tune": 150, "bench": 180, "image": 90, "snapshot": 200}
ENV_COMMANDS = (
    "nvidia-smi",
    "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv",
    "uname -a",
    "cat /proc/loadavg",
    f"{sys.executable} -VV",
    f"{sys.executable} -m pip list 2>/dev/null | grep -iE '^(numpy|torch|transformers|triton|"
    "tokenizers|safetensors|pytest|httptools|h11) '",
    "cat .gpu/prep.json",
    'ls -la "$(dirname "$ZEROSTART_CRIU")" 2>&1 | head -5; "$ZEROSTART_CRIU" --version',
    '"$ZEROSTART_CRIU" check 2>&1 | tail -5',
    "ldconfig -p | grep -E 'libcuda|libnvidia-ptxjit' ",
)


class Session:
    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.log = out / "session.log"
        self.summary: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": {}}

    def write(self, text: str) -> None:
        with self.log.open("a", encoding="utf-8", errors="replace") as f:
            f.write(text)

    def record(self, step: str, **fields: Any) -> None:
        self.summary["steps"][step] = fields
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")

    def run(self, step: str, cmd: list[str] | str, env: dict[str, str]) -> int:
        """Run one step's command, its output into the log; the exit status (124 on timeout)."""
        limit = LIMITS_S[step]
        self.write(f"\n===== {step} (limit {limit} s): {cmd}\n")
        t0 = time.perf_counter()
        with self.log.open("a", encoding="utf-8", errors="replace") as f:
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                shell=isinstance(cmd, str),
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)  # the step's whole process group: servers too
                proc.wait(timeout=30)
                rc = 124
        seconds = round(time.perf_counter() - t0, 1)
        self.write(f"===== {step}: exit {rc} after {seconds} s\n")
        self.record(step, exit=rc, seconds=seconds, ok=rc == 0)
        print(f"{step:9s} exit {rc:4d} {seconds:7.1f} s", flush=True)
        return rc


def step_env(s: Session, env: dict[str, str]) -> None:
    script = "".join(f"echo {shlex.quote('$ ' + c)}\n{c}\n" for c in ENV_COMMANDS)
    s.run("env", ["bash", "-c", script + "true"], env)


def carried_models() -> list[str]:
    prep = json.loads((FIXTURES / "prep.json").read_text())
    return list(prep["models"])


def step_pytest(s: Session, env: dict[str, str]) -> None:
    env = {
        **env,
        "ZEROSTART_GPU_REQUIRED": "1",
        "ZEROSTART_GPU_MODELS": ",".join(carried_models()),
        "ZEROSTART_GPU_FIXTURES": str(FIXTURES),
    }
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-v", "-rA"]
    cmd += ["-p", "no:cacheprovider", f"--junitxml={s.out / 'pytest.xml'}"]
    if not (FIXTURES / "modernbert" / "prep.json").exists():  # gpu_prep.py without --families
        cmd += ["--ignore", "tests/gpu/test_gpu_families.py"]  # (its DeBERTa cases too)
    if not carried_models():  # gpu_prep.py --models "": a call for the families' fixtures only
        cmd += ["--ignore", "tests/gpu/test_gpu_engine.py"]
    s.run("pytest", cmd, env)


def step_tune(s: Session, env: dict[str, str]) -> None:
    cmd = [sys.executable, "tools/gpu_tune.py", "--kernels", str(FIXTURES / "bench" / "kernels")]
    budget = str(LIMITS_S["tune"] - 30)
    s.run("tune", [*cmd, "--out", str(s.out / "tuning.json"), "--budget-s", budget], env)


def step_bench(s: Session, env: dict[str, str]) -> None:
    cmd = [sys.executable, "bench/gpu.py", "--kernels", str(FIXTURES / "bench" / "kernels")]
    tuning = s.out / "tuning.json"
    if tuning.exists():
        cmd += ["--tuning", str(tuning)]
    s.run("bench", [*cmd, "--out", str(s.out / "gpu_bench.json")], env)


IMAGE_CODE = """
import json, sys, time
from zerostart.image.build import build_image, BuildOptions
from zerostart.image.inspect import inspect_image, summary_line
bundle, out, result = sys.argv[1:4]
t0 = time.perf_counter()
r = build_image(bundle, out, BuildOptions(arch=sys.argv[4]))
layers = [{"name": l.name, "compressed": l.size, "unpacked": l.uncompressed_size, "files": l.file_count}
          for l in r.layers]
report = inspect_image(out)
data = {
    "build_s": time.perf_counter() - t0,
    "layers": layers,
    "without_weights": {k: sum(l[k] for l in layers if l["name"] != "model")
                        for k in ("compressed", "unpacked")},
    "excluded": r.closure.excluded,
    "largest": summary_line(report, top=8),
    "native": sorted(f.dest for f in r.closure.files.values() if ".so" in f.dest),
}
open(result, "w").write(json.dumps(data, indent=2, default=str) + "\\n")
print(json.dumps({k: data[k] for k in ("build_s", "layers", "without_weights", "largest")}, indent=2))
"""


def step_image(s: Session, env: dict[str, str]) -> None:
    bundle = FIXTURES / "models" / carried_models()[0] / "bundle"
    arch = json.loads((FIXTURES / "prep.json").read_text())["archs"][0]
    cmd = [
        sys.executable,
        "-c",
        IMAGE_CODE,
        str(bundle),
        IMAGE_DIR,
        str(s.out / "image.json"),
        arch,
    ]
    s.run("image", f"rm -rf {IMAGE_DIR}; " + " ".join(shlex.quote(c) for c in cmd), env)


def step_snapshot(s: Session, env: dict[str, str]) -> None:
    bundle = FIXTURES / "models" / carried_models()[0] / "bundle"
    cmd = [sys.executable, "bench/snapshot.py", "--bundle", str(bundle), "--device", "cuda"]
    cmd += ["--runs", "5", "--out", str(s.out / "snapshot.json")]
    torch_model = REPO / ".cache" / "bench-gpu" / "bert-base-random"  # made by the bench step
    if (torch_model / "config.json").exists():
        cmd += ["--torch-model", str(torch_model)]
    else:
        cmd += ["--skip-torch"]
        s.write("\nsnapshot: no PyTorch model folder (the bench step makes it): torch skipped\n")
    s.run("snapshot", cmd, env)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", default=",".join(STEPS))
    args = ap.parse_args(argv)
    steps = [x for x in args.steps.split(",") if x]
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; choose from {STEPS}")
    s = Session(args.out)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    funcs = {
        "env": step_env,
        "pytest": step_pytest,
        "tune": step_tune,
        "bench": step_bench,
        "image": step_image,
        "snapshot": step_snapshot,
    }
    for step in steps:
        try:
            funcs[step](s, env)
        except Exception as exc:  # a step that could not even start: record it, go on
            s.write(f"\n===== {step}: could not start: {exc!r}\n")
            s.record(step, exit=None, ok=False, error=repr(exc))
    failed = [k for k, v in s.summary["steps"].items() if k != "env" and not v.get("ok")]
    s.summary["failed"] = failed
    s.record("env", **s.summary["steps"].get("env", {}))
    print("failed steps:", ", ".join(failed) or "none", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
