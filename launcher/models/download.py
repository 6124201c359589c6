"""One resumable HTTP(S) download into a partial file, hashing as it goes,
that remembers every host it contacted. Redirects are followed by hand so
that each hop is recorded, and credentials go only to the host they are for
(a hub's signed CDN link needs none)."""
from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from launcher.errors import SandboxError

CHUNK = 1024 * 1024
MAX_REDIRECTS = 10
TIMEOUT = 60

# progress(done_bytes, total_bytes or None)
Progress = Callable[[int, int | None], None]


class DownloadError(SandboxError):
    exit_code = 1


class _RangeRefused(DownloadError):
    """The server has no bytes after those already here: they are not a
    beginning of this file."""


@dataclass
class Contacts:
    """What a pull contacted: one entry per request, the URL without its query
    (a signed link's query is a credential)."""

    requests: list[dict] = field(default_factory=list)

    def add(self, method: str, url: str, status: int | str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.requests.append({"method": method, "host": parts.hostname, "port": parts.port or
                              (443 if parts.scheme == "https" else 80), "scheme": parts.scheme,
                              "path": parts.path, "status": status})

    def hosts(self) -> list[str]:
        seen: list[str] = []
        for r in self.requests:
            host = f"{r['host']}:{r['port']}"
            if host not in seen:
                seen.append(host)
        return seen


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # answered as an HTTPError with the Location, which we follow ourselves


_opener = urllib.request.build_opener(_NoRedirects)


def fetch(url: str, part: Path, contacts: Contacts, *, auth: dict[str, str] | None = None,
          progress: Progress | None = None) -> tuple[str, int]:
    """Download `url` into `part`, resuming from the bytes already there.
    `auth` maps a host to the Authorization header it alone gets. Returns the
    sha256 and the size of the whole file."""
    digest = hashlib.sha256()
    done = 0
    if part.exists():
        with open(part, "rb") as f:  # the bytes already here count toward the hash
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                done += len(chunk)
    try:
        response, url = _open(url, done, contacts, auth or {})
    except _RangeRefused as e:
        part.unlink()
        raise DownloadError(f"{e}: the partial file was not a beginning of this one and was removed; "
                            f"run the command again") from None
    with response:
        if done and response.status == 200:  # the server ignored the Range: start over
            digest, done = hashlib.sha256(), 0
            part.unlink()
        total = _total(response, done)
        with open(part, "ab") as out:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, ValueError, http.client.HTTPException) as e:  # dropped: the bytes stay for a resume
                    raise DownloadError(f"the download from {_where(url)} broke off after {done} bytes ({e}); "
                                        f"run the same command again to resume") from None
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    if total is not None and done != total:
        raise DownloadError(f"the download from {_where(url)} ended at {done} of {total} bytes; "
                            f"run the same command again to resume")
    return digest.hexdigest(), done


def _open(url: str, offset: int, contacts: Contacts, auth: dict[str, str]):
    for _ in range(MAX_REDIRECTS):
        headers = {"Accept-Encoding": "identity", "User-Agent": "sandbox-model-pull"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        host = urllib.parse.urlsplit(url).hostname or ""
        if host in auth:
            headers["Authorization"] = auth[host]
        request = urllib.request.Request(url, headers=headers)
        try:
            response = _opener.open(request, timeout=TIMEOUT)
        except urllib.error.HTTPError as e:
            contacts.add("GET", url, e.code)
            if e.code in (301, 302, 303, 307, 308) and e.headers.get("Location"):
                url = urllib.parse.urljoin(url, e.headers["Location"])
                continue
            if e.code == 416 and offset:
                raise _RangeRefused(f"{_where(url)} has no bytes after the {offset} already here") from None
            raise DownloadError(f"{_where(url)} answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            contacts.add("GET", url, "no answer")
            reason = getattr(e, "reason", e)
            raise DownloadError(f"cannot reach {_where(url)} ({reason})") from None
        contacts.add("GET", url, response.status)
        return response, url
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects from {_where(url)}")


def _total(response, offset: int) -> int | None:
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        total = content_range.rsplit("/", 1)[-1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
