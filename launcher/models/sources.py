"""Where a model comes from: a Hugging Face repository file pinned to a
revision (`hf://OWNER/REPO@REVISION/PATH.gguf`, the form huggingface_hub's
file system uses), an HTTPS URL, or a file on this machine."""
from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import SandboxError
from launcher.text import printable


class SourceError(SandboxError):
    exit_code = 2


@dataclass(frozen=True)
class HubSource:
    repo: str  # OWNER/REPO
    revision: str  # a commit, a tag or a branch
    filename: str  # path inside the repository

    def __str__(self) -> str:
        return f"hf://{self.repo}@{self.revision}/{self.filename}"


@dataclass(frozen=True)
class UrlSource:
    url: str

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class FileSource:
    path: Path

    def __str__(self) -> str:
        return f"file://{self.path}"


Source = HubSource | UrlSource | FileSource

# What a request line can carry as it is: printable ASCII. A server's
# Location is text it chose (control characters, spaces, non-ASCII), and
# http.client refuses some of it only by raising from deep inside a request.
_URL_CHARACTERS = re.compile(r"[!-~]+")


def url_fault(url: str) -> str | None:
    """Why `url` cannot be requested as it is, or None."""
    if not _URL_CHARACTERS.fullmatch(url):
        return "it holds control characters, spaces or non-ASCII text"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
    except ValueError as e:
        return str(e)
    if not parts.hostname:
        return "it names no host"
    return None


def shown_url(url: str) -> str:
    """A URL someone else chose, escaped and cut short for one line of an error."""
    return printable(url[:200]) + ("..." if len(url) > 200 else "")

_HUB = re.compile(r"hf://(?P<repo>[\w.-]+/[\w.-]+)(@(?P<revision>[^/]+))?/(?P<filename>.+)")


def parse_source(text: str) -> Source:
    if text.startswith("hf://"):
        match = _HUB.fullmatch(text)
        if not match:
            raise SourceError(f"{text}: a hub file is hf://OWNER/REPO@REVISION/PATH.gguf")
        if not match["revision"]:
            raise SourceError(f"{text}: name the revision to pin, a commit hash or a tag: "
                              f"hf://{match['repo']}@REVISION/{match['filename']}")
        if ".." in match["filename"].split("/"):
            raise SourceError(f"{text}: the path in the repository may not contain '..'")
        return HubSource(match["repo"], urllib.parse.unquote(match["revision"]), match["filename"])
    if text.startswith(("https://", "http://")):
        fault = url_fault(text)
        if fault:
            raise SourceError(f"{shown_url(text)}: a URL that cannot be used ({fault})")
        return UrlSource(text)
    if "://" in text and not text.startswith("file://"):
        raise SourceError(f"{text}: a source is hf://OWNER/REPO@REVISION/FILE, an https:// URL, or a file")
    path = Path(os.path.expanduser(text.removeprefix("file://"))).resolve()
    if not path.is_file():
        raise SourceError(f"{text}: no such file")
    return FileSource(path)


def file_name(source: Source) -> str:
    if isinstance(source, HubSource):
        return source.filename.rsplit("/", 1)[-1]
    if isinstance(source, UrlSource):
        name = urllib.parse.unquote(urllib.parse.urlsplit(source.url).path.rsplit("/", 1)[-1])
        return name or "model.gguf"
    return source.path.name
