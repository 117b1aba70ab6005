"""The I/O-free HTTP/1.1 request reader and its state tables: bytes and a clock in, events out.

No sockets: each test feeds bytes (whole, or split at every byte) to a real
llhttp parser through ``RequestReader`` and checks the events and the state.
"""

from __future__ import annotations

import pytest

from zerostart.errors import ServeError
from zerostart.serve._h1core import (
    ExpectContinue,
    Refusal,
    Request,
    RequestReader,
    Upgraded,
    canonical_target,
    remove_dot_segments,
)
from zerostart.serve._h1state import (
    CONN_TRANSITIONS,
    READ_BUDGET,
    READ_TIMER,
    READ_TRANSITIONS,
    Conn,
    ConnInput,
    Read,
    ReadInput,
    StateBug,
    next_conn,
    next_read,
)
from zerostart.serve.config import HttpLimits, ServerConfig

LIMITS = HttpLimits(max_head_bytes=1024, max_body_bytes=256, max_trailer_bytes=128)


def head(method: str = "POST", target: str = "/embed", *fields: str, version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(
    body: bytes, *trailers: str, target: str = "/embed", fields: tuple[str, ...] = ()
) -> bytes:
    start = head("POST", target, "Host: a.x", "Transfer-Encoding: chunked", *fields)
    chunk = f"{len(body):x}\r\n".encode() + body + b"\r\n"
    return start + chunk + b"0\r\n" + "".join(t + "\r\n" for t in trailers).encode() + b"\r\n"


def feed(raw: bytes, *, limits: HttpLimits = LIMITS, split: int = 0, now: float = 0.0) -> list:
    """All events for ``raw``, fed whole (split=0) or ``split`` bytes at a time."""
    reader = RequestReader(limits)
    if not split:
        return reader.receive(raw, now)
    events = []
    for i in range(0, len(raw), split):
        events += reader.receive(raw[i : i + split], now)
    return events


def only_request(events: list) -> Request:
    assert len(events) == 1 and isinstance(events[0], Request), events
    return events[0]


def refusal(events: list) -> Refusal:
    assert isinstance(events[-1], Refusal), events
    return events[-1]


# -- the tables -----------------------------------------------------------------------
def test_every_state_has_a_timer_and_a_budget_and_refuse_leads_to_stopped() -> None:
    assert set(READ_TIMER) == set(Read) and set(READ_BUDGET) == set(Read)
    for state in Read:
        assert next_read(state, ReadInput.REFUSE) is Read.STOPPED
    assert {s for s, _ in READ_TRANSITIONS} == set(Read)  # every state can be left
    for state in Conn:
        assert next_conn(state, ConnInput.LOST) is Conn.CLOSED
    assert (Conn.CLOSED, ConnInput.HALF_CLOSE) not in CONN_TRANSITIONS


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (Read.IDLE, ReadInput.DATA),  # body bytes before a head
        (Read.HEAD, ReadInput.COMPLETE),  # a message ends inside its head
        (Read.BODY, ReadInput.FIELD),  # a trailer field without a last chunk
        (Read.STOPPED, ReadInput.BEGIN),  # parsing after a refusal
    ],
)
def test_a_move_the_table_does_not_hold_is_a_state_bug(state: Read, event: ReadInput) -> None:
    with pytest.raises(StateBug, match=f"from {state.name} on {event.name}"):
        next_read(state, event)
    with pytest.raises(StateBug):
        next_conn(Conn.CLOSED, ConnInput.STOP_READING)


def test_config_builds_one_limits_object_and_limits_are_validated() -> None:
    config = ServerConfig(max_trailer_bytes=77, body_deadline_s=3.0, max_connections_per_client=9)
    limits = config.http
    assert (limits.max_trailer_bytes, limits.body_deadline_s) == (77, 3.0)
    assert limits.max_connections_per_client == 9
    assert limits.new(max_head_bytes=5).max_head_bytes == 5 and limits.max_head_bytes == 16384
    with pytest.raises(ServeError, match="max_trailer_bytes must be > 0"):
        limits.new(max_trailer_bytes=0)
    with pytest.raises(ServeError, match="max_connections_per_client must be > 0"):
        ServerConfig(max_connections_per_client=0)


# -- requests -----------------------------------------------------------------------------
@pytest.mark.parametrize("split", [0, 1, 7])
def test_a_request_is_the_same_whole_or_split_at_every_byte(split: int) -> None:
    raw = head("POST", "/embed?x=1", "Host: a.x", "Content-Length: 5", "Accept: a", "Accept: b")
    req = only_request(feed(raw + b"hello", split=split, now=4.5))
    assert (req.method, req.target, req.path, req.body) == (
        "POST",
        "/embed?x=1",
        "/embed",
        b"hello",
    )
    assert req.headers == {"host": "a.x", "content-length": "5", "accept": "a, b"}
    assert (req.keep_alive, req.http_version, req.received_at) == (True, "1.1", 4.5)


def test_pipelined_requests_come_out_in_order_and_the_reader_is_idle_between() -> None:
    reader = RequestReader(LIMITS)
    raw = b"".join(head("GET", f"/r{i}", "Host: a.x") for i in range(3))
    events = reader.receive(raw, 0.0)
    assert [e.target for e in events] == ["/r0", "/r1", "/r2"]
    assert reader.state is Read.IDLE and reader.deadline() is None


def test_chunked_body_is_joined() -> None:
    req = only_request(feed(chunked(b'{"inputs":"hi"}'), split=3))
    assert req.body == b'{"inputs":"hi"}'


# -- trailers: kept out of the head, bounded -----------------------------------------------
@pytest.mark.parametrize("split", [0, 1])
def test_trailer_fields_never_reach_the_head(split: int) -> None:
    raw = chunked(
        b"{}",
        "Authorization: Bearer the-right-key",
        "Host: b.x",
        "X-Only-In-Trailer: 1",
        fields=("Authorization: Bearer wrong",),
    )
    req = only_request(feed(raw, split=split))
    assert req.headers["authorization"] == "Bearer wrong"
    assert req.headers["host"] == "a.x"
    assert "x-only-in-trailer" not in req.headers
    # and they do not leak into the next request on the same connection either
    reader = RequestReader(LIMITS)
    events = reader.receive(raw + head("GET", "/info", "Host: a.x"), 0.0)
    assert [type(e) for e in events] == [Request, Request]
    assert events[1].headers == {"host": "a.x"}


def test_trailers_over_the_limit_get_431_counted_by_field() -> None:
    many = [f"X-T{i}: {'v' * 20}" for i in range(10)]  # ~300 bytes > 128
    refused = refusal(feed(chunked(b"{}", *many)))
    assert (refused.status, refused.message) == (431, "trailer section exceeds 128 bytes")
    assert refused.error_type == "Validation"


def test_one_endless_trailer_field_is_cut_off_at_the_limit() -> None:
    """httptools buffers a field until it ends: raw bytes of reads that complete nothing count."""
    reader = RequestReader(LIMITS)
    start = chunked(b"{}")[: -len(b"\r\n")]  # up to and including the last chunk "0\r\n"
    assert reader.receive(start + b"X-Endless: ", 0.0) == []
    assert reader.state in (Read.CHUNK, Read.TRAILERS)
    sent = 0
    events: list = []
    while not events and sent < 1 << 20:
        events = reader.receive(b"v" * 50, 0.0)
        sent += 50
    assert refusal(events).status == 431
    assert sent <= LIMITS.max_trailer_bytes + 50  # cut off within one read of the limit
    assert reader.state is Read.STOPPED
    assert reader.receive(b"v" * 10_000, 0.0) == []  # and nothing more is buffered


def test_an_endless_header_value_is_cut_off_at_the_head_limit() -> None:
    reader = RequestReader(LIMITS)
    reader.receive(b"GET / HTTP/1.1\r\nHost: a.x\r\nX-Big: ", 0.0)
    sent, events = 0, []
    while not events and sent < 1 << 20:
        events = reader.receive(b"a" * 100, 0.0)
        sent += 100
    assert refusal(events).status == 431 and sent <= LIMITS.max_head_bytes + 100


# -- Host, Authorization and the target ----------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        (("Host: a.x", "Host: b.x"), "more than one host"),
        (("Host: a.x", "host: a.x"), "more than one host"),
        (("Host: a.x", "Authorization: Bearer k", "Authorization: Bearer k"), "authorization"),
        (("Host: a.x", "Authorization: Bearer k", "AUTHORIZATION: Bearer j"), "authorization"),
        (("Host: a.x", "Content-Type: a/b", "Content-Type: c/d"), "content-type"),
        ((), "needs a Host"),
        (("Host: a b",), "not a host name"),
        (("Host: a.x/embed",), "not a host name"),
        (("Host: a.x@b.x",), "not a host name"),
        (("Host: a.x:8o",), "not a host name"),
        (("Host: a.x:\xb2",), "not a host name"),  # a digit to str.isdigit, not to RFC 3986
        (("Host: [zz::1]",), "not a host name"),
        (("Host: [::1",), "not a host name"),
    ],
)
def test_ambiguous_or_missing_host_and_keys_get_400(fields: tuple[str, ...], needle: str) -> None:
    refused = refusal(feed(head("GET", "/info", *fields)))
    assert refused.status == 400 and needle in refused.message


def test_http_1_0_needs_no_host_and_odd_but_valid_hosts_pass() -> None:
    assert only_request(feed(head("GET", "/info", version="1.0"))).headers == {}
    for host in ("A.X", "a.x:8080", "[::1]:80", "127.0.0.1", ""):
        assert only_request(feed(head("GET", "/info", f"Host: {host}"))).headers["host"] == host


@pytest.mark.parametrize(
    ("target", "want"),
    [
        ("/embed", "/embed"),
        ("//embed", "//embed"),
        ("/embed/", "/embed/"),
        ("/./embed", "/embed"),
        ("/%65mbed", "/embed"),
        ("/%2e/embed", "/embed"),
        ("/%2E%2E/embed", "/embed"),
        ("/models/a/../b/embed", "/models/b/embed"),
        ("/models/a/%2e%2e/b/embed", "/models/b/embed"),
        ("/../../embed", "/embed"),
        ("/embed/.", "/embed/"),
        ("/embed/..", "/"),
        ("/a%2fb", "/a%2Fb"),  # a reserved character stays escaped
        ("/embed?x=/../y", "/embed?x=/../y"),  # the query is not a path
        ("/embed#frag", "/embed"),
        ("http://b.x/embed?q", "/embed?q"),
        ("HTTPS://b.x", "/"),
    ],
)
def test_targets_are_made_canonical(target: str, want: str) -> None:
    assert canonical_target(target)[0] == want


@pytest.mark.parametrize(
    "target", ["*", "a.x:443", "ftp://b.x/embed", "http:///embed", "/%zz", "/%6"]
)
def test_targets_that_are_not_paths_are_refused(target: str) -> None:
    with pytest.raises(ValueError):
        canonical_target(target)


def test_an_absolute_target_overrides_host_and_its_path_is_routed() -> None:
    req = only_request(feed(head("POST", "http://b.x/embed", "Host: a.x", "Content-Length: 0")))
    assert (req.headers["host"], req.target) == ("b.x", "/embed")
    refused = refusal(feed(head("GET", "http://u@b.x/", "Host: a.x")))
    assert refused.status == 400 and "user information" in refused.message


def test_remove_dot_segments_rfc3986_examples() -> None:
    # RFC 3986 section 5.2.4's own walk-through, and section 5.4's normal examples
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("/b/c/./g") == "/b/c/g"
    assert remove_dot_segments("/b/c/../../../g") == "/g"


# -- bodies, deadlines, odd framing ----------------------------------------------------------
def test_a_declared_body_over_the_limit_is_413_before_it_is_sent() -> None:
    events = feed(
        head("POST", "/embed", "Host: a.x", "Content-Length: 9999", "Expect: 100-continue")
    )
    assert [type(e) for e in events] == [Refusal] and events[0].status == 413


def test_expect_continue_is_an_event_after_the_checks() -> None:
    events = feed(head("POST", "/embed", "Host: a.x", "Content-Length: 2", "Expect: 100-continue"))
    assert [type(e) for e in events] == [ExpectContinue]


def test_a_chunked_body_over_the_limit_is_413() -> None:
    assert refusal(feed(chunked(b"x" * 300))).status == 413


def test_head_deadline_runs_from_the_first_byte() -> None:
    reader = RequestReader(LIMITS.new(head_timeout_s=10))
    assert reader.deadline() is None  # nothing received: the driver's own timer
    reader.receive(b"GET / HTTP/1.1\r\n", 100.0)
    reader.receive(b"Host: a", 105.0)  # progress does not extend a head
    assert reader.deadline() == (110.0, "head")
    assert reader.expire(109.9) is None
    refused = reader.expire(110.0)
    assert refused is not None and (refused.status, refused.error_type) == (408, "Timeout")
    assert reader.state is Read.STOPPED


def test_a_steady_trickle_of_body_still_meets_the_whole_body_deadline() -> None:
    limits = LIMITS.new(body_timeout_s=10, body_deadline_s=30)
    reader = RequestReader(limits)
    reader.receive(head("POST", "/embed", "Host: a.x", "Content-Length: 200"), 0.0)
    now = 0.0
    while reader.expire(now) is None:  # one byte every 5 s: never a 10 s pause
        assert now < 60, "the body never timed out"
        now += 5.0
        reader.receive(b"x", now)
    assert now == 30.0
    assert reader.state is Read.STOPPED


def test_a_body_pause_longer_than_body_timeout_is_408() -> None:
    reader = RequestReader(LIMITS.new(body_timeout_s=10, body_deadline_s=30))
    reader.receive(head("POST", "/embed", "Host: a.x", "Content-Length: 200") + b"x", 0.0)
    reader.receive(b"x", 4.0)
    when, what = reader.deadline() or (0.0, "")
    assert when == 14.0 and "no byte for 10 s" in what
    refused = reader.expire(14.0)
    assert refused is not None and refused.status == 408 and "no byte" in refused.message


def test_trailers_run_on_the_body_deadline() -> None:
    reader = RequestReader(LIMITS.new(body_deadline_s=30))
    reader.receive(chunked(b"{}")[:-2] + b"X-Slow: ", 0.0)
    assert reader.state in (Read.CHUNK, Read.TRAILERS)
    reader.receive(b"v", 9.0)
    reader.receive(b"v", 18.0)
    reader.receive(b"v", 27.0)
    refused = reader.expire(30.0)
    assert refused is not None and refused.status == 408


def test_malformed_input_is_400_and_the_reader_stops() -> None:
    reader = RequestReader(LIMITS)
    events = reader.receive(head("GET", "/", "Host: a.x") + b"GARBAGE\r\n\r\n", 0.0)
    assert isinstance(events[0], Request) and refusal(events).status == 400
    assert "malformed HTTP request" in refusal(events).message
    assert reader.receive(head("GET", "/", "Host: a.x"), 0.0) == []


def test_upgrade_is_answered_then_stops() -> None:
    raw = head("GET", "/", "Host: a.x", "Connection: upgrade", "Upgrade: websocket")
    events = feed(raw + b"\x00\x01binary")
    assert [type(e) for e in events] == [Request, Upgraded]
