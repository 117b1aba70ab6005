"""The thin HTTP driver under push and pull: sockets, auth, and errors in one place.

:class:`Session` holds keep-alive ``http.client`` connections to one registry
(plus any host it redirects blob downloads to), answers ``401`` challenges
(Basic, or the Bearer token flow: realm/service/scope from
``WWW-Authenticate``, credentials from the caller or ``~/.docker/config.json``),
and turns every network failure and every refusal into a typed error naming
the registry and the fix. It knows nothing of images; the protocol rules are
in :mod:`zerostart.registry._distribution`, the push/pull walk in
:mod:`zerostart.registry.client`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from zerostart import __version__
from zerostart.registry import _distribution as d
from zerostart.registry.errors import (
    DigestMismatchError,
    ImageLayoutError,
    RegistryAuthError,
    RegistryError,
    RegistryNotFoundError,
    RegistryUnreachableError,
)

log = logging.getLogger(__name__)

Auth = tuple[str, str]

# Each connect / read may wait this long: long enough for a registry writing a
# big layer to storage, short enough that a dead host does not hang a build.
NETWORK_TIMEOUT_S = 60.0
# 1 MiB socket writes/reads: fewer syscalls than http.client's 8 KiB default.
IO_BLOCK_BYTES = 1024 * 1024
MAX_REDIRECTS = 5
USER_AGENT = f"zerostart/{__version__}"


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class FileSlice:
    """A replayable request body: ``length`` bytes of a file from ``offset``."""

    def __init__(self, path: Path, offset: int, length: int, sent: Callable[[int], None]) -> None:
        self.path, self.offset, self.length, self.sent = path, offset, length, sent
        self._file: BinaryIO | None = None
        self._left = 0

    def __enter__(self) -> FileSlice:
        self._file = self.path.open("rb")
        self._file.seek(self.offset)
        self._left = self.length
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file:
            self._file.close()

    def read(self, n: int = -1) -> bytes:
        assert self._file is not None
        n = self._left if n < 0 else min(n, self._left)
        data = self._file.read(n)
        if len(data) < n:
            # Content-Length is already sent: a short body would leave the registry
            # waiting for bytes that never come (a timeout, then retries), so stop now.
            raise ImageLayoutError(
                self.path,
                f"ended {self._left - len(data)} bytes before the {self.length} being sent"
                " (truncated, or changed during the push)",
            )
        self._left -= len(data)
        self.sent(len(data))
        return data


Body = bytes | FileSlice


class Session:
    """Connections to one registry, its credentials and its current Authorization header."""

    def __init__(
        self,
        ref: d.Reference,
        *,
        insecure: bool | None,
        auth: Auth | None,
        timeout_s: float,
        scopes: list[str],
    ) -> None:
        self.ref = ref
        plain = d.is_loopback(ref.host) if insecure is None else insecure
        self.scheme = "http" if plain else "https"
        self.netloc = ref.registry
        self.timeout_s = timeout_s
        self.scopes = scopes
        self._auth = auth
        self._auth_header: str | None = None
        self._login: str | None = None  # the user name behind _auth_header, for messages
        self._conns: dict[tuple[str, str], http.client.HTTPConnection] = {}
        self._used: set[tuple[str, str]] = set()

    # -- connections ---------------------------------------------------------

    def _conn(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        conn = self._conns.get(key)
        if conn is None:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = cls(netloc, timeout=self.timeout_s, blocksize=IO_BLOCK_BYTES)
            self._conns[key] = conn
        return conn

    def _drop(self, scheme: str, netloc: str) -> None:
        conn = self._conns.pop((scheme, netloc), None)
        self._used.discard((scheme, netloc))
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for key in list(self._conns):
            self._drop(*key)

    def _split(self, url: str) -> tuple[str, str, str]:
        """``(scheme, netloc, path?query)``; a bare path is on the registry itself."""
        parts = urllib.parse.urlsplit(url)
        if not parts.netloc:
            return self.scheme, self.netloc, url
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return parts.scheme or self.scheme, parts.netloc, path or "/"

    def _network_error(self, netloc: str, exc: BaseException, *, retryable: bool) -> RegistryError:
        if isinstance(exc, ConnectionRefusedError):
            what, hint = "connection refused", "is the registry running and is the port right?"
        elif isinstance(exc, TimeoutError | socket.timeout):
            what = f"no answer within {self.timeout_s:g} s"
            hint = "is the host reachable? raise the timeout for a slow link"
        elif isinstance(exc, socket.gaierror):
            what, hint = f"cannot resolve host ({exc.strerror})", "check the registry name"
        elif isinstance(exc, OSError) and "SSL" in type(exc).__name__:
            what = f"TLS failed ({exc})"
            hint = "for a plain-HTTP registry pass --insecure (insecure=True)"
        else:
            what = f"connection broken ({type(exc).__name__}: {exc})"
            hint = "check the network and run the command again; finished blobs are skipped"
        return RegistryUnreachableError(netloc, what, retryable=retryable, hint=hint)

    # -- one exchange ----------------------------------------------------------

    @contextlib.contextmanager
    def _exchange(
        self, method: str, url: str, headers: dict[str, str], body: Body | None
    ) -> Iterator[http.client.HTTPResponse]:
        """Send one request and yield the open response; network errors become ours here."""
        scheme, netloc, path = self._split(url)
        hdrs = {"User-Agent": USER_AGENT, **headers}
        if netloc == self.netloc and self._auth_header:
            hdrs["Authorization"] = self._auth_header
        for attempt in (0, 1):
            reused = (scheme, netloc) in self._used
            conn = self._conn(scheme, netloc)
            t0 = time.perf_counter()
            try:
                if isinstance(body, FileSlice):
                    with body as stream:
                        conn.request(method, path, body=stream, headers=hdrs)
                else:
                    conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                self._drop(scheme, netloc)
                stale = isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError)
                if reused and stale and attempt == 0 and method != "PATCH":
                    continue  # a keep-alive connection the server had closed: reconnect
                raise self._network_error(netloc, exc, retryable=reused or stale) from exc
            except BaseException:
                self._drop(scheme, netloc)  # interrupted mid-request: the connection is unusable
                raise
            self._used.add((scheme, netloc))
            log.debug(
                "%s %s%s -> %d in %.3f s",
                method,
                netloc,
                path,
                resp.status,
                time.perf_counter() - t0,
            )
            try:
                yield resp
            except (ConnectionError, TimeoutError, http.client.HTTPException) as exc:
                self._drop(scheme, netloc)
                raise self._network_error(netloc, exc, retryable=True) from exc
            except BaseException:
                self._drop(scheme, netloc)  # body not read to the end: the connection is unusable
                raise
            if resp.will_close:
                self._drop(scheme, netloc)
            return

    def _buffered(
        self, method: str, url: str, headers: dict[str, str], body: Body | None
    ) -> Answer:
        with self._exchange(method, url, headers, body) as resp:
            data = resp.read(d.MAX_MANIFEST_BYTES + 1)
            if len(data) > d.MAX_MANIFEST_BYTES:
                raise RegistryError(self.netloc, f"{method} {url}: answer larger than expected")
            return Answer(resp.status, resp.headers, data)

    # -- requests with auth ------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: Body | None = None,
    ) -> Answer:
        """A buffered request; a 401 runs the auth flow once and sends it again."""
        headers = dict(headers or {})
        ans = self._buffered(method, url, headers, body)
        if ans.status == 401:
            self._authorize(ans)
            ans = self._buffered(method, url, headers, body)
        if ans.status in (401, 403):
            who = f"user {self._login!r}" if self._login else "anonymous access"
            raise self.error(ans, f"{method} {self._split(url)[2]} refused for {who}")
        return ans

    @contextlib.contextmanager
    def stream(
        self, url: str, headers: dict[str, str], *, expect: tuple[int, ...] = (200,)
    ) -> Iterator[http.client.HTTPResponse]:
        """A ``GET`` whose body the caller reads; follows redirects (blob storage).

        ``expect``: the statuses that yield the response (``(206, 200)`` for a
        range read); any other is raised as the registry's error.
        """
        for _ in range(MAX_REDIRECTS + 1):
            with self._exchange("GET", url, headers, None) as resp:
                if resp.status == 401 and self._split(url)[1] == self.netloc:
                    self._authorize(Answer(resp.status, resp.headers, resp.read(65536)))
                    continue
                if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                    resp.read()
                    url = urllib.parse.urljoin(
                        url if "://" in url else self.base + url, resp.getheader("Location", "")
                    )
                    continue
                if resp.status not in expect:
                    raise self.error(
                        Answer(resp.status, resp.headers, resp.read(65536)), f"GET {url}"
                    )
                yield resp
                return
        raise RegistryError(self.netloc, f"GET {url}: too many redirects or auth retries")

    def read_blob(self, digest: str, size: int, sink: Callable[[bytes], object]) -> None:
        """Stream the whole blob ``digest`` into ``sink``, checking its size and sha256 as it arrives.

        ``sink`` sees every block before the digest is known to be right: it
        must write somewhere the caller discards on error (a ``.partial``
        file, a buffer). Raises DigestMismatchError for a wrong announced
        length, a short or long body, or another digest; RegistryError for
        what the registry refuses.
        """
        verifier = d.Verifier(digest, size)
        try:
            with self.stream(d.blob_path(self.ref, digest), {}) as resp:
                announced = resp.getheader("Content-Length")
                if announced is not None and int(announced) != size:
                    raise d.ProtocolError(
                        f"blob {digest}: registry sends {announced} bytes, expected {size}"
                    )
                while block := resp.read(IO_BLOCK_BYTES):
                    verifier.update(block)
                    sink(block)
            verifier.check()
        except d.ProtocolError as exc:
            raise DigestMismatchError(
                self.netloc,
                f"refused blob {digest}: {exc}",
                hint="the registry's copy is corrupt or was tampered with",
            ) from exc

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def _authorize(self, ans: Answer) -> None:
        """Answer a 401's challenge: Basic with the credentials, or fetch a Bearer token."""
        challenge = ans.header("WWW-Authenticate") or ""
        scheme, params = d.parse_challenge(challenge)
        creds = self._auth or docker_credentials(self.netloc)
        login_hint = (
            "pass credentials (zerostart push/pull --username, or auth=(user, password)) "
            f"or run `docker login {self.netloc}`"
        )
        if scheme == "basic":
            if creds is None:
                raise self.error(ans, "login required", hint=login_hint)
            header = d.basic_header(*creds)
            if header == self._auth_header:
                raise self.error(ans, f"login as {creds[0]!r} refused", hint="check the password")
            self._auth_header, self._login = header, creds[0]
            return
        if scheme != "bearer":
            raise self.error(ans, f"unsupported auth challenge {challenge!r}", hint=login_hint)
        url = d.token_url(params, self.scopes)
        headers = {"Authorization": d.basic_header(*creds)} if creds else {}
        scheme_t, netloc_t, _ = self._split(url)
        token_session = Session(
            d.Reference(netloc_t, "token"),
            insecure=scheme_t == "http",
            auth=None,
            timeout_s=self.timeout_s,
            scopes=[],
        )
        try:
            tok = token_session._buffered("GET", url, headers, None)
        finally:
            token_session.close()
        if tok.status != 200:
            who = f"as {creds[0]!r}" if creds else "anonymously"
            raise self.error(
                tok, f"token service {netloc_t} refused a token {who}", hint=login_hint
            )
        self._auth_header = "Bearer " + d.parse_token(tok.body)
        self._login = creds[0] if creds else None

    def error(self, ans: Answer, what: str, *, hint: str | None = None) -> RegistryError:
        """The one place a registry's status becomes an exception, with its own message."""
        message = f"{what}: {ans.status} {d.error_message(ans.body) or http.client.responses.get(ans.status, '')}"
        codes = frozenset(d.error_codes(ans.body))
        if ans.status in (401, 403):
            return RegistryAuthError(
                self.netloc,
                message,
                status=ans.status,
                codes=codes,
                hint=hint or "check the credentials and their rights on this repository",
            )
        if ans.status == 404:
            return RegistryNotFoundError(self.netloc, message, status=404, codes=codes, hint=hint)
        return RegistryError(self.netloc, message, status=ans.status, codes=codes, hint=hint)


def docker_credentials(registry: str) -> Auth | None:
    """Credentials ``docker login`` stored inline in ``$DOCKER_CONFIG/config.json``."""
    folder = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ImageLayoutError(path, f"unreadable docker config: {exc}") from exc
    return d.docker_config_credentials(config, registry)
