"""One resumable HTTP(S) download into a partial file, hashing as it goes,
that remembers every host it contacted. The source is someone else's server
and may lie: redirects are followed by hand, each hop checked (https only,
or http when the bytes have a sha256 to be checked against; never file:,
ftp:, data: or any other scheme), credentials go only to the exact origin
they are for and never over plain http (a hub's signed CDN link needs
none), and the download stops at the size the source announced, the size
stated beforehand, or a cap, whichever is least."""
from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

from launcher.errors import SandboxError
from launcher.models.sources import shown_url, url_fault
from launcher.text import printable

CHUNK = 1024 * 1024
MAX_REDIRECTS = 10
# The hub keeps files of up to 50 GB (larger models come split in parts), so
# no one GGUF file is larger; `--max-size` raises it for other sources.
DEFAULT_MAX_BYTES = 64 * 2**30

# progress(done_bytes, total_bytes or None)
DownloadProgress = Callable[[int, int | None], None]
Origin = tuple[str, str, int]  # scheme, host, port


class DownloadRefused(SandboxError):
    """The source led somewhere it may not, or sent what it may not: nothing
    of it is kept."""

    exit_code = 2


class DownloadError(SandboxError):
    """The download broke off: the bytes so far stay for a resume."""

    exit_code = 1


class _RangeRefused(DownloadError):
    """The server has no bytes after those already here: they are not a
    beginning of this file."""


@dataclass(frozen=True)
class Limits:
    """How many bytes a download may bring: `stated` is the size a source we
    trust more than the server said beforehand (the hub's metadata, a lock);
    `cap` bounds everything, and `cap_flag` is how the user raises it."""

    cap: int = DEFAULT_MAX_BYTES
    stated: int | None = None
    stated_by: str = ""  # "the hub announced", "team.yaml.lock states"
    cap_flag: str = "--max-size"


@dataclass(frozen=True)
class Pace:
    """The slowest a source may send: less than `min_bytes` in `window`
    seconds (counted from the last `min_bytes` that came) is a stall, broken
    off as a cut connection is, to be resumed. A source dripping a byte now
    and then would otherwise hold a pull for ever, each read well within any
    timeout. The window is also how long connecting and each read may wait."""

    min_bytes: int = 2**20
    window: float = 60.0

    def said(self) -> str:
        amount = f"{self.min_bytes // 2**20} MiB" if self.min_bytes % 2**20 == 0 else f"{self.min_bytes} bytes"
        return f"less than {amount} in {self.window:g} s"


@dataclass
class Contacts:
    """What a pull contacted: one entry per request, the URL without its query
    (a signed link's query is a credential)."""

    requests: list[dict] = field(default_factory=list)

    def add(self, method: str, url: str, status: int | str) -> None:
        scheme, host, port = origin(url)
        self.requests.append({"method": method, "host": host, "port": port, "scheme": scheme,
                              "path": urllib.parse.urlsplit(url).path, "status": status})

    def hosts(self) -> list[str]:
        seen: list[str] = []
        for r in self.requests:
            host = f"{r['host']}:{r['port']}"
            if host not in seen:
                seen.append(host)
        return seen


def origin(url: str) -> Origin:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port or {"https": 443, "http": 80}.get(
        parts.scheme.lower(), 0)


def _build_opener() -> urllib.request.OpenerDirector:
    # build_opener() would add handlers for file:, ftp: and data: URLs too. And
    # no redirect handler, which parses a Location before it can be refused: a
    # redirect is an HTTPError with the Location, checked and followed by hand.
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def fetch(url: str, part: int, contacts: Contacts, *, auth: dict[Origin, str] | None = None,
          allow_http: bool = False, limits: Limits = Limits(), pace: Pace = Pace(),
          progress: DownloadProgress | None = None) -> tuple[str, int]:
    """Download `url` into the open partial file `part`, resuming from the
    bytes already in it. `auth` maps an https origin to the Authorization
    header it alone gets; plain http is followed only with `allow_http`
    (when the bytes will be checked against a sha256). Returns the sha256
    and the size of the whole file."""
    digest = hashlib.sha256()
    done = 0
    os.lseek(part, 0, os.SEEK_SET)
    while chunk := os.read(part, CHUNK):  # the bytes already here count toward the hash
        digest.update(chunk)
        done += len(chunk)
    most = _most(limits)
    if done > most:
        raise DownloadRefused(f"the partial download holds {done} bytes, more than {_most_said(limits)}")
    try:
        response, url = _open(url, done, contacts, auth or {}, allow_http, pace)
    except _RangeRefused as e:
        raise DownloadRefused(f"{e}: they are not a beginning of this file and were removed; "
                              f"run the command again") from None
    with response:
        if done and response.status == 200:  # the server ignored the Range: start over
            digest, done = hashlib.sha256(), 0
            os.ftruncate(part, 0)
        os.lseek(part, done, os.SEEK_SET)
        total = _total(response, done)
        if total is not None and total > most:
            raise DownloadRefused(f"{_where(url)} announces {total} bytes, more than {_most_said(limits)}")
        expected = total if total is not None else most
        window_started, window_bytes = time.monotonic(), 0
        while True:
            try:
                # read1: whatever has come, so that a drip is seen between its drops. One byte
                # more than expected, at most: enough to tell that it sent too much.
                chunk = response.read1(min(CHUNK, expected - done + 1))
            except TimeoutError:
                raise _stalled(url, pace, done) from None
            except (OSError, ValueError, http.client.HTTPException) as e:  # dropped: the bytes stay for a resume
                raise DownloadError(f"the download from {_where(url)} broke off after {done} bytes "
                                    f"({printable(str(e))}); run the same command again to resume") from None
            if not chunk:
                break
            if done + len(chunk) > expected:
                said = f"the {total} bytes it announced" if total is not None else _most_said(limits)
                raise DownloadRefused(f"{_where(url)} sent more than {said}")
            write_all(part, chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
            window_bytes += len(chunk)
            if window_bytes >= pace.min_bytes:
                window_started, window_bytes = time.monotonic(), 0
            elif time.monotonic() - window_started > pace.window:
                raise _stalled(url, pace, done)
    if total is not None and done != total:
        raise DownloadError(f"the download from {_where(url)} ended at {done} of {total} bytes; "
                            f"run the same command again to resume")
    return digest.hexdigest(), done


def _stalled(url: str, pace: Pace, done: int) -> DownloadError:
    return DownloadError(f"the download from {_where(url)} stalled: {pace.said()} (after {done} bytes); "
                         f"run the same command again to resume")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _most(limits: Limits) -> int:
    return min(limits.cap, limits.stated) if limits.stated is not None else limits.cap


def _most_said(limits: Limits) -> str:
    if limits.stated is not None and limits.stated <= limits.cap:
        return f"the {limits.stated} bytes {limits.stated_by}"
    return f"{limits.cap} bytes (raise the cap with {limits.cap_flag} SIZE)"


def _open(url: str, offset: int, contacts: Contacts, auth: dict[Origin, str], allow_http: bool, pace: Pace):
    opener = _build_opener()
    for hop in range(MAX_REDIRECTS):
        _check_url(url, allow_http, redirected=hop > 0)
        headers = {"Accept-Encoding": "identity", "User-Agent": "sandbox-model-pull"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        where = origin(url)
        if where[0] == "https" and where in auth:
            headers["Authorization"] = auth[where]
        request = urllib.request.Request(url, headers=headers)
        try:
            response = opener.open(request, timeout=pace.window)
        except urllib.error.HTTPError as e:
            contacts.add("GET", url, e.code)
            e.close()
            if e.code in (301, 302, 303, 307, 308) and e.headers.get("Location"):
                try:
                    url = urllib.parse.urljoin(url, e.headers["Location"])
                except ValueError:  # urljoin splits the Location: "http://[::1/x" cannot be
                    url = e.headers["Location"]
                continue
            if e.code == 416 and offset:
                raise _RangeRefused(f"{_where(url)} has no bytes after the {offset} already here") from None
            raise DownloadError(f"{_where(url)} answered {e.code} {printable(str(e.reason))}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            contacts.add("GET", url, "no answer")
            reason = getattr(e, "reason", e)
            raise DownloadError(f"cannot reach {_where(url)} ({printable(str(reason) or type(reason).__name__)})"
                                ) from None
        contacts.add("GET", url, response.status)
        return response, url
    raise DownloadRefused(f"more than {MAX_REDIRECTS} redirects from {_where(url)}")


def _check_url(url: str, allow_http: bool, redirected: bool) -> None:
    how = "redirected to" if redirected else "asked for"
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    fault = url_fault(url)
    if fault and scheme in ("https", "http"):
        raise DownloadRefused(f"{how} a URL that cannot be used, {shown_url(url)} ({printable(fault)}); refused")
    if scheme == "https" or (scheme == "http" and allow_http):
        return
    if scheme == "http":
        raise DownloadRefused(f"{how} {_where(url)}, which is not encrypted, and there is no sha256 to check the "
                              f"bytes against (--sha256, or a policy with one); refused")
    raise DownloadRefused(f"{how} {shown_url(url)}: a model is downloaded over https (or http with a "
                          f"sha256 to check), never from a {printable(scheme)}: URL; refused")


def _total(response, offset: int) -> int | None:
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        total = content_range.rsplit("/", 1)[-1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return printable(f"{parts.scheme}://{parts.netloc}{parts.path}")
