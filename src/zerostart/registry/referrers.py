"""Artifacts that refer to an image: the OCI referrers API, and its tag-schema fallback.

OCI Distribution 1.1 (``spec.md``, "Listing Referrers") lets a manifest name
another as its ``subject``; ``GET /v2/<name>/referrers/<digest>`` lists them
as an image index. A registry without that API (Debian's docker-registry,
distribution 2.8, answers 404) is served by the spec's fallback: an image
index tagged ``sha256-<hex of the subject digest>`` listing the referrers,
which the pusher of a referrer keeps up to date (read, add, write back).

Neither listing is trusted: callers fetch each referrer's manifest by digest
(verified) and check its ``subject`` themselves.
"""

from __future__ import annotations

import json
from typing import Any

from zerostart.oci import OCI_INDEX
from zerostart.registry import _distribution as d
from zerostart.registry._http import Auth, Session
from zerostart.registry.errors import RegistryAuthError, RegistryError
from zerostart.registry.ranges import BlobReader

MAX_REFERRERS = 1000  # an index listing more is refused (an attacker's, or a broken one)


def fallback_tag(subject: str) -> str:
    """The tag-schema fallback's tag for ``subject`` (``sha256:ab..`` -> ``sha256-ab..``)."""
    algo, _, hexd = d.check_digest(subject).partition(":")
    return f"{algo}-{hexd}"


def _listed(doc: Any, where: str, artifact_type: str | None) -> list[dict[str, Any]]:
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests", []), list):
        raise RegistryError(where, "the referrers listing is not an image index")
    kids = [dict(k) for k in doc.get("manifests", []) if isinstance(k, dict)]
    if len(kids) > MAX_REFERRERS:
        raise RegistryError(where, f"the referrers listing has {len(kids)} entries; refused")
    return [k for k in kids if artifact_type is None or k.get("artifactType") == artifact_type]


def list_referrers(
    reader: BlobReader, subject: str, artifact_type: str | None = None
) -> list[dict[str, Any]]:
    """Descriptors of the manifests whose subject is ``subject`` (API first, then the tag).

    Returns [] when neither lists any. Raises RegistryError for a refusal
    other than "not found".
    """
    session = reader._session()
    ref = reader.ref
    path = f"/v2/{ref.repository}/referrers/{d.check_digest(subject)}"
    try:
        ans = session.request("GET", path, {"Accept": OCI_INDEX})
    except RegistryAuthError:  # some registries guard routes they do not serve: no API
        ans = None
    if ans and ans.status == 200 and (ans.header("Content-Type") or "").startswith(OCI_INDEX):
        try:
            return _listed(json.loads(ans.body), ref.registry, artifact_type)
        except ValueError as exc:
            raise RegistryError(ref.registry, f"referrers of {subject}: not JSON") from exc
    req = d.get_manifest(ref, fallback_tag(subject))
    ans = session.request(req.method, req.path, dict(req.headers))
    if ans.status == 404:
        return []
    if ans.status != 200:
        raise session.error(ans, f"referrers tag {fallback_tag(subject)}")
    try:
        return _listed(json.loads(ans.body), ref.registry, artifact_type)
    except ValueError as exc:
        raise RegistryError(ref.registry, f"tag {fallback_tag(subject)}: not JSON") from exc


def add_referrer(
    reference: str,
    subject: str,
    descriptor: dict[str, Any],
    *,
    insecure: bool | None = None,
    auth: Auth | None = None,
    timeout_s: float = 60.0,
) -> bool:
    """Make the manifest ``descriptor`` (already pushed, its subject ``subject``) listed.

    Where the registry serves the referrers API it lists the manifest on its
    own and nothing is written (returns False). Else the fallback tag's index
    is read, the descriptor added (replacing one of the same digest) and the
    index written back (returns True). Two writers at once may lose one
    entry: the spec's fallback has no compare-and-swap.
    """
    try:
        ref = d.parse_reference(reference)
    except d.ProtocolError as exc:
        raise RegistryError(reference.split("/", 1)[0], str(exc)) from exc
    session = Session(
        ref,
        insecure=insecure,
        auth=auth,
        timeout_s=timeout_s,
        scopes=d.scopes_for(ref, push=True),
    )
    try:
        api = session.request(
            "GET", f"/v2/{ref.repository}/referrers/{d.check_digest(subject)}", {}
        )
        if api.status == 200 and (api.header("Content-Type") or "").startswith(OCI_INDEX):
            return False
        tag = fallback_tag(subject)
        req = d.get_manifest(ref, tag)
        ans = session.request(req.method, req.path, dict(req.headers))
        if ans.status == 200:
            try:
                index = json.loads(ans.body)
            except ValueError as exc:
                raise RegistryError(ref.registry, f"tag {tag} is not JSON") from exc
            kids = _listed(index, ref.registry, None)
        elif ans.status == 404:
            kids = []
        else:
            raise session.error(ans, f"GET referrers tag {tag}")
        kids = [k for k in kids if k.get("digest") != descriptor["digest"]] + [descriptor]
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": kids},
            separators=(",", ":"),
        ).encode()
        put = d.put_manifest(ref, OCI_INDEX, len(body), tag)
        done = session.request(put.method, put.path, dict(put.headers), body)
        if done.status != 201:
            raise session.error(done, f"PUT referrers tag {tag}")
        return True
    finally:
        session.close()
