"""platform.toml parsing: defaults, paths, secrets, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from zerostart.platform_toml import ConfigError, ModelConfig, load, parse


def test_defaults_and_units() -> None:
    c = parse('[models.minilm]\nbundle = "/b"\n')
    m = c.models["minilm"]
    assert m == ModelConfig(name="minilm", source="/b")
    assert (m.min_replicas, m.max_replicas, m.concurrency) == (0, 4, 32)
    assert (m.idle_timeout_s, m.queue_timeout_s, m.max_queue, m.device) == (60.0, 30.0, 256, "cpu")
    assert c.gateway.port == 8080 and c.gateway.api_key is None
    assert c.autoscaler.stable_window_s == 60.0


def test_every_documented_key(tmp_path: Path) -> None:
    (tmp_path / "platform.toml").write_text(
        """
[gateway]
host = "0.0.0.0"
port = 9000
max_body_bytes = 2048
drain_timeout = 5
[autoscaler]
stable_window = 30
panic_window_percentage = 20
tick = 1
[pool]
cpu = 3
[models.a]
bundle = "bundles/a"
min_replicas = 1
max_replicas = 2
concurrency = 4
idle_timeout = 10
max_queue = 5
queue_timeout = 2.5
start_timeout = 9
device = "cuda"
[models.b]
image = "layouts/b:v1"
[models.c]
reference = "localhost:5000/c:latest"
"""
    )
    c = load(tmp_path / "platform.toml")
    a = c.models["a"]
    assert a.source == str(tmp_path / "bundles" / "a")  # relative to the file
    assert (a.min_replicas, a.max_replicas, a.concurrency, a.max_queue) == (1, 2, 4, 5)
    assert (a.idle_timeout_s, a.queue_timeout_s, a.start_timeout_s) == (10.0, 2.5, 9.0)
    assert a.device == "cuda"
    assert c.models["b"].source == str(tmp_path / "layouts" / "b") + ":v1"
    assert c.models["b"].source_kind == "image"
    assert c.models["c"].source == "localhost:5000/c:latest"
    assert (c.gateway.host, c.gateway.port, c.gateway.max_body_bytes) == ("0.0.0.0", 9000, 2048)
    assert c.autoscaler.panic_window_s == 6.0 and c.pool.cpu == 3


def test_api_key_from_an_environment_variable_is_kept_out_of_repr() -> None:
    text = '[gateway]\napi_key_env = "K"\n[models.a]\nbundle = "/b"\napi_key = "model-key"\n'
    c = parse(text, env={"K": "gw-key"})
    assert c.gateway.api_key == "gw-key" and c.models["a"].api_key == "model-key"
    assert "gw-key" not in repr(c) and "model-key" not in repr(c)


@pytest.mark.parametrize(
    ("text", "key", "fix"),
    [
        ('[models.a]\nbundle = "/b"\nmax_replicas = 0', "models.a.max_replicas", ">= 1"),
        (
            '[models.a]\nbundle = "/b"\nmin_replicas = 3\nmax_replicas = 2',
            "models.a.min_replicas",
            "lower",
        ),
        ('[models.a]\nbundle = "/b"\nidle_timout = 3', "models.a.idle_timout", "idle_timeout"),
        ('[models.a]\nbundle = "/b"\nconcurrency = 2.5', "models.a.concurrency", "integer"),
        ('[models.a]\nbundle = "/b"\nqueue_timeout = "3"', "models.a.queue_timeout", "number"),
        ('[models.a]\nbundle = "/b"\ndevice = "tpu"', "models.a.device", "cuda"),
        ("[models.a]\nmin_replicas = 1", "models.a", "bundle ="),
        ('[models.a]\nbundle = "/b"\nimage = "/i"', "models.a", "exactly one"),
        ('[models.A_b]\nbundle = "/b"', "models.A_b", "DNS label"),
        ("[gateway]\nport = 8080", "models", "[models.minilm]"),
        ('[gateway]\nport = "x"\n[models.a]\nbundle = "/b"', "gateway.port", "integer"),
        (
            '[gateway]\napi_key_env = "NOPE"\n[models.a]\nbundle = "/b"',
            "gateway.api_key_env",
            "export NOPE",
        ),
        (
            '[autoscaler]\ntarget_utilization = 70\n[models.a]\nbundle = "/b"',
            "autoscaler.target_utilization",
            "0.7",
        ),
        ('[gatway]\n[models.a]\nbundle = "/b"', "gatway", "[gateway]"),
        ("[models.a\n", "", "TOML"),
    ],
)
def test_bad_files_name_the_key_and_the_fix(text: str, key: str, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, env={})
    assert info.value.key == key
    assert fix in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "key", "nearest", "every"),
    [
        ('[models.a]\nbundle = "/b"\nmax_replica = 2', "models.a.max_replica", "'max_replicas'",
         ("api_key_env", "bundle", "concurrency", "gpu_archs", "idle_timeout", "max_queue")),
        ("[gateway]\nprot = 1\n[models.a]\nbundle = \"/b\"", "gateway.prot", "'port'",
         ("api_key", "api_key_env", "drain_timeout", "host", "max_body_bytes")),
        ("[pool]\nsizeing = 1\n[models.a]\nbundle = \"/b\"", "pool.sizeing", "'sizing'",
         ("cpu", "cuda", "demand_window", "resolve_interval", "wait_penalty")),
        ('[modles.a]\nbundle = "/b"', "modles", "[models.NAME]",
         ("[gateway]", "[autoscaler]", "[pool]", "[deploy]")),
    ],
)  # fmt: skip
def test_an_unknown_key_lists_every_valid_key_and_suggests_the_nearest(
    text: str, key: str, nearest: str, every: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, env={})
    assert info.value.key == key
    hint = info.value.hint or ""
    assert hint.startswith(f"did you mean {nearest}?"), hint
    assert all(k in hint for k in every), hint


def test_an_unknown_key_far_from_any_gets_no_guess() -> None:
    with pytest.raises(ConfigError) as info:
        parse('[models.a]\nbundle = "/b"\nzzzz = 1', env={})
    assert "did you mean" not in (info.value.hint or "")
    assert "max_replicas" in (info.value.hint or "")


def test_source_checks_name_a_missing_folder_a_loop_and_a_file(tmp_path: Path) -> None:
    """platform/sources.py on real folders (a real bundle's check is in
    tests/integration/test_platform.py): the path resolves at parse without a traceback
    (Path.resolve() raised RuntimeError on a loop), and the check says what is wrong."""
    from zerostart.platform.sources import check_sources

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "file").write_text("x")
    (tmp_path / "layout").mkdir()
    text = (
        '[models.loop]\nbundle = "a"\n[models.gone]\nbundle = "nope"\n'
        '[models.file]\nbundle = "file"\n[models.img]\nimage = "layout"\n'
        '[models.reg]\nreference = "127.0.0.1:5000/x:1"\n'
    )
    checks = {c.model: c for c in check_sources(parse(text, base=tmp_path, env={}))}
    assert "symlink loop" in checks["loop"].detail and checks["loop"].key == "models.loop.bundle"
    assert checks["gone"].detail == f"{tmp_path / 'nope'} does not exist"
    assert "is not a folder" in checks["file"].detail
    assert not checks["img"].ok and "not an OCI image layout" in checks["img"].detail
    assert checks["reg"].ok and "pulled at start" in checks["reg"].detail
    assert [c.ok for c in checks.values()].count(False) == 4


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # Chromium
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
        ("", False),  # curl, urllib, requests: no preference
        ("*/*", False),
        ("application/json", False),
        ("application/json, text/html;q=0.5", False),
        ("text/html;q=0", False),
        ("text/html;q=bogus", False),
        ("TEXT/HTML", True),
    ],
)
def test_status_page_goes_to_browsers_only(accept: str, html: bool) -> None:
    from zerostart.platform.status_page import wants_html

    assert wants_html(accept) is html
