"""The I/O-free Distribution protocol rules: references, uploads, digests, auth."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse

import pytest

from zerostart.oci import OCI_INDEX, OCI_MANIFEST, REF_NAME_ANNOTATION
from zerostart.registry import _distribution as d

DIGEST = "sha256:" + "ab" * 32


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("127.0.0.1:5000/sst2:1", "127.0.0.1:5000", "sst2", "1", None),
        ("localhost/a/b", "localhost", "a/b", "latest", None),
        ("ghcr.io/org/model:v1.2", "ghcr.io", "org/model", "v1.2", None),
        ("ubuntu", d.DOCKER_HUB, "library/ubuntu", "latest", None),
        ("user/app:3", d.DOCKER_HUB, "user/app", "3", None),
        ("docker.io/library/busybox:1", d.DOCKER_HUB, "library/busybox", "1", None),
        (f"reg:5000/x@{DIGEST}", "reg:5000", "x", None, DIGEST),
        (f"reg:5000/x:t@{DIGEST}", "reg:5000", "x", "t", DIGEST),
        ("[::1]:5000/x:t", "[::1]:5000", "x", "t", None),
    ],
)
def test_parse_reference_splits_like_docker(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = d.parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


def test_reference_target_prefers_the_digest_and_round_trips() -> None:
    ref = d.parse_reference(f"127.0.0.1:5000/a/b:t@{DIGEST}")
    assert ref.target == DIGEST
    assert str(ref) == f"127.0.0.1:5000/a/b:t@{DIGEST}"
    assert d.parse_reference("127.0.0.1:5000/a:t").target == "t"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("127.0.0.1:5000/Upper:1", "lowercase"),
        ("127.0.0.1:5000/x:bad!tag", "tag"),
        ("127.0.0.1:5000/x@sha256:short", "digest"),
        ("127.0.0.1:5000/x@md5:" + "a" * 32, "digest"),
    ],
)
def test_parse_reference_rejects_bad_names(text: str, problem: str) -> None:
    with pytest.raises(d.ProtocolError, match=problem):
        d.parse_reference(text)


def test_loopback_hosts_are_the_plain_http_ones() -> None:
    assert d.parse_reference("127.0.0.1:5000/x").host == "127.0.0.1"
    assert d.parse_reference("[::1]:5000/x").host == "::1"
    assert d.is_loopback("127.0.0.1") and d.is_loopback("localhost") and d.is_loopback("::1")
    assert not d.is_loopback("ghcr.io") and not d.is_loopback("10.0.0.1")


# --------------------------------------------------------------------------- requests


def test_start_upload_asks_to_mount_only_from_another_repository() -> None:
    ref = d.parse_reference("r:1/dst:1")
    mount = d.start_upload(ref, mount=DIGEST, source="src/repo")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(mount.path).query)
    assert mount.method == "POST" and mount.path.startswith("/v2/dst/blobs/uploads/?")
    assert query == {"mount": [DIGEST], "from": ["src/repo"]}
    assert d.start_upload(ref, mount=DIGEST, source="dst").path == "/v2/dst/blobs/uploads/"
    assert d.start_upload(ref).path == "/v2/dst/blobs/uploads/"


def test_with_query_keeps_the_registrys_upload_state() -> None:
    url = d.with_query("http://r:1/v2/x/blobs/uploads/u?_state=abc%3D", digest=DIGEST)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query == {"_state": ["abc="], "digest": [DIGEST]}
    assert url.startswith("http://r:1/v2/x/blobs/uploads/u?")


def test_manifest_requests_carry_media_types() -> None:
    ref = d.parse_reference("r:1/x:7")
    get = d.get_manifest(ref)
    assert get.path == "/v2/x/manifests/7"
    assert OCI_MANIFEST in get.headers["Accept"] and OCI_INDEX in get.headers["Accept"]
    put = d.put_manifest(ref, OCI_INDEX, 123, DIGEST)
    assert put.path == f"/v2/x/manifests/{DIGEST}"
    assert put.headers == {"Content-Type": OCI_INDEX, "Content-Length": "123"}


# --------------------------------------------------------------------------- uploads


def test_monolithic_upload_is_post_then_one_put_with_the_body() -> None:
    up = d.BlobUpload(DIGEST, 1000, chunk_size_bytes=100, monolithic_max_bytes=1000)
    up.on_start(202, "/v2/x/blobs/uploads/1?_state=s")
    assert up.next_chunk() is None
    url, offset, length = up.finish()
    assert (offset, length) == (0, 1000) and f"digest={urllib.parse.quote(DIGEST)}" in url
    up.on_finish(201, DIGEST)
    assert up.state is d.UploadState.DONE and not up.mounted


def test_chunked_upload_walks_the_blob_in_chunk_sized_steps() -> None:
    up = d.BlobUpload(DIGEST, 250, chunk_size_bytes=100, monolithic_max_bytes=99)
    up.on_start(202, "/u/1")
    seen = []
    while (chunk := up.next_chunk()) is not None:
        seen.append(chunk)
        up.on_chunk(202, f"/u/after-{chunk[0]}", chunk[1])
    assert seen == [(0, 100), (100, 100), (200, 50)]
    assert [d.content_range(o, n) for o, n in seen] == ["0-99", "100-199", "200-249"]
    url, offset, length = up.finish()
    assert url.startswith("/u/after-200?") and (offset, length) == (250, 0)


def test_resume_rewinds_to_the_registrys_byte_count() -> None:
    up = d.BlobUpload(DIGEST, 300, chunk_size_bytes=100, monolithic_max_bytes=0)
    up.on_start(202, "/u/1")
    up.on_chunk(202, "/u/2", 100)
    up.resume(204, "0-149", "/u/3")  # the broken PATCH got half a chunk in
    assert up.next_chunk() == (150, 100) and up.location == "/u/3"
    up.resume(204, None, None)  # nothing held at all
    assert up.next_chunk() == (0, 100)
    with pytest.raises(d.ProtocolError, match="gone"):
        up.resume(404, None, None)


def test_mount_answer_finishes_the_upload_without_bytes() -> None:
    up = d.BlobUpload(DIGEST, 10)
    up.on_start(201, None)
    assert up.mounted and up.state is d.UploadState.DONE
    with pytest.raises(d.ProtocolError, match="done, not open"):
        up.next_chunk()


def test_upload_refuses_out_of_order_steps_and_bad_answers() -> None:
    up = d.BlobUpload(DIGEST, 200, chunk_size_bytes=100, monolithic_max_bytes=0)
    with pytest.raises(d.ProtocolError, match="start, not open"):
        up.finish()
    with pytest.raises(d.ProtocolError, match="Location"):
        d.BlobUpload(DIGEST, 1).on_start(202, None)
    up.on_start(202, "/u")
    with pytest.raises(d.ProtocolError, match="already started"):
        up.on_start(202, "/u")
    with pytest.raises(d.ProtocolError, match="closing upload at 0 of 200"):
        up.finish()
    up.on_chunk(202, None, 100)
    up.on_chunk(202, None, 100)
    up.finish()
    with pytest.raises(d.ProtocolError, match="expected"):
        up.on_finish(201, "sha256:" + "cd" * 32)


@pytest.mark.parametrize(
    ("header", "held"), [(None, 0), ("", 0), ("0-0", 1), ("0-1023", 1024), ("bytes=0-9", 10)]
)
def test_range_header_means_bytes_held(header: str | None, held: int) -> None:
    assert d.parse_range_end(header) == held


def test_range_header_not_from_zero_is_refused() -> None:
    with pytest.raises(d.ProtocolError):
        d.parse_range_end("5-9")


def test_chunk_constants_keep_big_layers_resumable() -> None:
    assert d.CHUNK_SIZE_BYTES <= d.MONOLITHIC_MAX_BYTES
    assert 1 << 20 <= d.CHUNK_SIZE_BYTES <= 64 << 20


# --------------------------------------------------------------------------- digests


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_verifier_accepts_exact_bytes_in_any_pieces() -> None:
    data = bytes(range(256)) * 10
    v = d.Verifier(_digest(data), len(data))
    for i in range(0, len(data), 333):
        v.update(data[i : i + 333])
    v.check()


def test_verifier_refuses_changed_short_and_long_content() -> None:
    data = b"layer bytes" * 100
    changed = d.Verifier(_digest(data), len(data))
    changed.update(data[:-1] + b"X")
    with pytest.raises(d.ProtocolError, match="does not match"):
        changed.check()
    short = d.Verifier(_digest(data), len(data))
    short.update(data[:-1])
    with pytest.raises(d.ProtocolError, match="expected 1100"):
        short.check()
    long = d.Verifier(_digest(data), len(data))
    with pytest.raises(d.ProtocolError, match="more than the expected"):
        long.update(data + b"!")


# --------------------------------------------------------------------------- manifests


def test_children_lists_config_before_layers_and_index_entries() -> None:
    cfg = {"mediaType": "c", "digest": DIGEST, "size": 1}
    layers = [{"mediaType": "l", "digest": "sha256:" + "0" * 64, "size": 2}]
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": layers}
    assert d.children(manifest, "") == ([cfg, *layers], False)
    index = {"schemaVersion": 2, "manifests": [cfg]}
    assert d.children(index, OCI_INDEX) == ([cfg], True)
    with pytest.raises(d.ProtocolError, match="unsupported manifest"):
        d.children({"schemaVersion": 1, "mediaType": "x"}, "x")


def test_select_manifest_picks_the_single_or_the_tagged_image() -> None:
    a = {"digest": "a", "annotations": {REF_NAME_ANNOTATION: "1"}}
    b = {"digest": "b", "annotations": {REF_NAME_ANNOTATION: "2"}}
    assert d.select_manifest({"manifests": [a]}, "other") == a
    assert d.select_manifest({"manifests": [a, b]}, "2") == b
    assert d.select_manifest({"manifests": [a, b]}, "3") is None


def test_descriptor_without_size_is_refused() -> None:
    with pytest.raises(d.ProtocolError, match="digest and size"):
        d.descriptor_for({"digest": DIGEST})


# --------------------------------------------------------------------------- errors and auth


def test_error_message_is_the_registrys_own_words() -> None:
    body = json.dumps(
        {
            "errors": [
                {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {"Tag": "9"}}
            ]
        }
    ).encode()
    assert d.error_message(body) == 'MANIFEST_UNKNOWN: manifest unknown ({"Tag": "9"})'
    assert d.error_codes(body) == {"MANIFEST_UNKNOWN"}
    assert d.error_message(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
    assert d.error_codes(b"nope") == set()


def test_parse_challenge_reads_quoted_and_bare_params() -> None:
    scheme, params = d.parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg.example",'
        'scope="repository:a/b:pull,push",error=insufficient_scope'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "reg.example",
        "scope": "repository:a/b:pull,push",
        "error": "insufficient_scope",
    }
    assert d.parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_token_url_asks_for_our_scopes_and_the_challenges() -> None:
    url = d.token_url(
        {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:x:pull"},
        ["repository:x:pull,push", "repository:y:pull"],
    )
    parts = urllib.parse.urlsplit(url)
    assert parts.netloc == "auth.example" and parts.path == "/token"
    assert urllib.parse.parse_qsl(parts.query) == [
        ("service", "reg"),
        ("scope", "repository:x:pull,push"),
        ("scope", "repository:y:pull"),
        ("scope", "repository:x:pull"),
    ]
    with pytest.raises(d.ProtocolError, match="realm"):
        d.token_url({}, [])


def test_parse_token_accepts_both_field_names() -> None:
    assert d.parse_token(b'{"token": "t1"}') == "t1"
    assert d.parse_token(b'{"access_token": "t2"}') == "t2"
    with pytest.raises(d.ProtocolError, match="without a token"):
        d.parse_token(b"{}")
    with pytest.raises(d.ProtocolError, match="not JSON"):
        d.parse_token(b"<html>")


def test_docker_config_credentials_as_docker_login_stores_them() -> None:
    auth = base64.b64encode(b"alice:s3:cret").decode()
    config = {
        "auths": {
            "127.0.0.1:5000": {"auth": auth},
            "https://ghcr.io": {"username": "bob", "password": "pw"},
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"carol:x").decode()},
        }
    }
    assert d.docker_config_credentials(config, "127.0.0.1:5000") == ("alice", "s3:cret")
    assert d.docker_config_credentials(config, "ghcr.io") == ("bob", "pw")
    assert d.docker_config_credentials(config, d.DOCKER_HUB) == ("carol", "x")
    assert d.docker_config_credentials(config, "other:1") is None
    assert d.docker_config_credentials({"credsStore": "desktop"}, "x") is None
    assert d.basic_header("alice", "pw") == "Basic " + base64.b64encode(b"alice:pw").decode()


def test_scopes_for_push_and_mount() -> None:
    ref = d.parse_reference("r:1/dst:1")
    assert d.scopes_for(ref, push=False) == ["repository:dst:pull"]
    assert d.scopes_for(ref, push=True, source="src") == [
        "repository:dst:pull,push",
        "repository:src:pull",
    ]
