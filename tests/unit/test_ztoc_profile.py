"""The span profile (zerostart/ztoc/_profile.py): round trip, and every refusal of a hostile one.

Each refusal below is one check in ``decode`` or ``bind``; a profile built to
pass every other check fails exactly that one, so removing a check fails its
test (the real mount's behaviour on the same profiles: tests/integration/test_zran_profile.py).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from zerostart.ztoc import Checkpoint, LayerRef, SpanProfile, SpanProfileError, spans_digest
from zerostart.ztoc._profile import FORMAT, MAX_LAYERS, MAX_READS, bind, decode


def _cps(n: int, seed: int = 0) -> tuple[Checkpoint, ...]:
    return tuple(
        Checkpoint(8 * 1000 * i, 4000 * i, b"", i == 0, hashlib.sha256(bytes([seed, i])).digest())
        for i in range(n)
    )


LAYER_A = "sha256:" + "a" * 64
LAYER_B = "sha256:" + "b" * 64
CPS = {LAYER_A: _cps(5), LAYER_B: _cps(3, seed=1)}


def _good() -> SpanProfile:
    refs = (
        LayerRef(LAYER_B, spans_digest(CPS[LAYER_B])),
        LayerRef(LAYER_A, spans_digest(CPS[LAYER_A])),
    )
    return SpanProfile(refs, ((0, 2), (1, 4), (1, 0), (0, 0)))


def _doc(**change: Any) -> bytes:
    doc = json.loads(_good().encode())
    doc.update(change)
    return json.dumps(doc).encode()


def test_round_trip_keeps_the_order_and_binds_to_layer_digests() -> None:
    p = decode(_good().encode())
    assert p == _good()
    assert bind(p, CPS) == [(LAYER_B, 2), (LAYER_A, 4), (LAYER_A, 0), (LAYER_B, 0)]


def test_repeated_reads_are_kept_once_in_first_order() -> None:
    raw = _doc(reads=[[1, 3], [0, 1], [1, 3], [0, 1], [1, 0]])
    assert decode(raw).reads == ((1, 3), (0, 1), (1, 0))


def test_spans_digest_names_the_span_list() -> None:
    assert spans_digest(_cps(5)) == spans_digest(_cps(5))
    assert spans_digest(_cps(5)) != spans_digest(_cps(4))  # other spans (another span size)
    assert spans_digest(_cps(5)) != spans_digest(_cps(5, seed=9))  # other bytes


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff{[", "not JSON"),
        (_doc(format="zerostart.chunk-profile"), "not a zerostart.ztoc-profile"),
        (_doc(version=2), "version 2"),
        (_doc(reads={"0": 1}), "'reads' list"),
        (_doc(layers=[{"digest": LAYER_A}]), "is not {'digest', 'spans'}"),
        (_doc(layers=[{"digest": "sha256:../x", "spans": LAYER_A}]), "not sha256 digests"),
        (_doc(layers=[{"digest": LAYER_A, "spans": "md5:00"}]), "not sha256 digests"),
        (
            _doc(layers=[{"digest": LAYER_A, "spans": LAYER_A}] * 2, reads=[]),
            "names a layer twice",
        ),
        (_doc(layers=[{"digest": LAYER_A, "spans": LAYER_A}] * (MAX_LAYERS + 1)), "limits"),
        (_doc(reads=[[2, 0]]), "within bounds"),  # layer index past the list
        (_doc(reads=[[-1, 0]]), "within bounds"),
        (_doc(reads=[[0, -3]]), "within bounds"),  # a negative span
        (_doc(reads=[[0, 1 << 20]]), "within bounds"),  # past the zTOC format's span limit
        (_doc(reads=[[0, 1.0]]), "within bounds"),
        (_doc(reads=[[0, True]]), "within bounds"),
        (_doc(reads=[[0, 1, 2]]), "within bounds"),
        (
            b'{"format":"'
            + FORMAT.encode()
            + b'","version":1,"layers":[],"reads":['
            + b",".join([b"[0,0]"] * (MAX_READS + 1))
            + b"]}",
            "reads .limits",
        ),
        (b"[" * (MAX_READS + MAX_LAYERS + 3), "has over"),  # refused before parsing
        (b" " * (16 * 1024 * 1024 + 1), "over the"),
    ],
)
def test_malformed_profiles_are_refused_whole(raw: bytes, message: str) -> None:
    with pytest.raises(SpanProfileError, match=message):
        decode(raw)


def test_a_layer_the_image_does_not_have_is_refused() -> None:
    """Wrong layer digest: recorded on another image (or forged)."""
    p = SpanProfile((LayerRef("sha256:" + "c" * 64, spans_digest(CPS[LAYER_A])),), ((0, 0),))
    with pytest.raises(SpanProfileError, match="not a zTOC layer of this image"):
        bind(p, CPS)


def test_a_profile_recorded_on_other_spans_is_refused() -> None:
    """Right layer, wrong span-list digest: another zTOC of the layer (another span size)."""
    p = SpanProfile((LayerRef(LAYER_A, spans_digest(_cps(9))),), ((0, 0),))
    with pytest.raises(SpanProfileError, match="recorded on other spans"):
        bind(p, CPS)


def test_a_span_past_the_layers_last_is_refused() -> None:
    """Span ids in range: layer A has 5 spans (0-4); span 5 would be past the layer's end."""
    p = SpanProfile((LayerRef(LAYER_A, spans_digest(CPS[LAYER_A])),), ((0, 4), (0, 5)))
    with pytest.raises(SpanProfileError, match=r"span 5 of layer .* out of range: its zTOC has 5"):
        bind(p, CPS)
