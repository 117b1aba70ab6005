"""The read order handed to the eStargz writer: trace host paths -> image paths, first read first."""

from __future__ import annotations

from pathlib import Path

from zerostart.image.closure import APPLICATION, RUNTIME, Closure, ImageFile
from zerostart.image.readorder import read_order
from zerostart.image.trace import Trace


def test_read_order_maps_the_trace_onto_image_paths(tmp_path: Path) -> None:
    host = tmp_path / "host"
    files = {
        "bin/python3.11": "/usr/local/bin/python3.11",
        "lib/libpython3.11.so": "/usr/local/lib/libpython3.11.so",
        "lib/libc.so.6": "/usr/lib/libc.so.6",
        "stdlib/os.py": "/usr/local/lib/python3.11/os.py",
        "stdlib/json/__init__.py": "/usr/local/lib/python3.11/json/__init__.py",
        "stdlib/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so": (
            "/usr/local/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so"
        ),
        "site/numpy/_core/_umath.cpython-311-x86_64-linux-gnu.so": (
            "/usr/local/lib/python3.11/site-packages/numpy/_core/_umath.cpython-311-x86_64-linux-gnu.so"
        ),
        "app/zerostart/serve.py": "/usr/local/lib/python3.11/site-packages/zerostart/serve.py",
    }
    closure = Closure(cache_tag="cpython-311")
    for rel, dest in files.items():
        p = host / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        layer = APPLICATION if rel.startswith("app/") else RUNTIME
        closure.add(ImageFile(dest, layer, "test", source=str(p), compile_pyc=rel.endswith(".py")))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "weights.safetensors").write_bytes(b"w")
    h = {rel: str(host / rel) for rel in files}
    trace = Trace(
        command=[],
        python={"executable": h["bin/python3.11"]},
        bundle=str(bundle),
        task="embeddings",
        startup_modules=[("os", h["stdlib/os.py"]), ("sys", "")],
        mapped=sorted(
            [
                h["lib/libpython3.11.so"],
                h["lib/libc.so.6"],
                h["stdlib/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so"],
                h["site/numpy/_core/_umath.cpython-311-x86_64-linux-gnu.so"],
            ]
        ),
        events=[
            ("import", "zerostart.serve"),
            ("open", str(host / "app/zerostart/__pycache__/serve.cpython-311.pyc")),
            ("import", "json"),
            ("open", h["stdlib/json/__init__.py"]),
            ("import", "_json"),  # an extension: mapped at this point
            ("open", "/proc/self/maps"),  # not in the image
            ("open", str(bundle / "weights.safetensors")),
            ("open", h["stdlib/os.py"]),  # read again: listed once
        ],
    )
    order = read_order(trace, closure, bundle=bundle)
    assert order == [
        "/usr/local/bin/python3.11",
        "/usr/lib/libc.so.6",  # shared libraries, sorted by host path
        "/usr/local/lib/libpython3.11.so",
        "/usr/local/lib/python3.11/os.pyc",  # start-up modules; runtime pycs are sourceless
        # the application keeps its sources: its pyc lives in __pycache__
        "/usr/local/lib/python3.11/site-packages/zerostart/__pycache__/serve.cpython-311.pyc",
        "/usr/local/lib/python3.11/json/__init__.pyc",
        "/usr/local/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so",
        "/model/weights.safetensors",
        # mapped, but no event placed it
        "/usr/local/lib/python3.11/site-packages/numpy/_core/_umath.cpython-311-x86_64-linux-gnu.so",
    ]
    with_sources = read_order(trace, closure, bundle=bundle, keep_sources=True)
    assert "/usr/local/lib/python3.11/__pycache__/os.cpython-311.pyc" in with_sources
