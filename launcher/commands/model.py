"""`sandbox model pull|list|verify|inspect`: get a model once, from a source
one can name, into the model store (launcher/models/store.py), and prove
afterwards that it is the same bytes. The pull is the one step that touches
the network, outside any sandbox; it reports every host it contacted."""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from launcher.errors import PolicyError, Problem, SandboxError
from launcher.models import store as model_store
from launcher.lockfile import lock_path, read_lock
from launcher.models.download import (
    CHUNK,
    DEFAULT_MAX_BYTES,
    Contacts,
    DownloadError,
    Limits,
    Pace,
    DownloadProgress,
    fetch,
    origin,
    write_all,
)
from launcher.models.facts import (
    GgufError,
    context_warning,
    estimate,
    facts_for,
    fit_warnings,
    check_gguf,
    read_facts,
    this_machine,
    together,
)
from launcher.models.policy_edit import ModelEntry, model_entry, set_model_file
from launcher.models.sources import (
    FileSource,
    HubSource,
    UrlSource,
    file_name,
    parse_source,
)
from launcher.policy.files import GGUF_MAGIC, remember_sha256, sha256_of
from launcher.policy.loader import Document, load
from launcher.policy.model import Policy
from launcher.text import printable

Say = Callable[[str], None]
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
_TRUE = {"1", "ON", "YES", "TRUE"}


class PullError(SandboxError):
    exit_code = 2


@dataclass
class Pulled:
    path: Path
    sha256: str
    size: int
    source: str
    reused: bool  # already in the store: nothing was downloaded
    contacts: Contacts = field(default_factory=Contacts)
    seconds: float = 0.0
    provenance: dict = field(default_factory=dict)
    policy_updated: str | None = None

    def to_dict(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "size": self.size, "source": self.source,
                "reused": self.reused, "contacted": self.contacts.requests, "seconds": round(self.seconds, 2),
                "provenance": self.provenance, "policy_updated": self.policy_updated}


def pull(source_text: str, *, sha256: str | None = None, policy: Path | None = None, alias: str | None = None,
         name: str | None = None, say: Say | None = None, progress: DownloadProgress | None = None,
         max_size: int | None = None, pace: Pace = Pace()) -> Pulled:
    say = say or (lambda _m: None)
    started = time.monotonic()
    source = parse_source(source_text)
    expected = _expected(sha256, "--sha256")
    entry: ModelEntry | None = None
    if policy is not None:
        entry = model_entry(policy, alias)
        from_policy = _expected(entry.sha256, f"{policy} models[{entry.index}].sha256") if entry.sha256 else None
        if expected and from_policy and expected != from_policy:
            raise PullError(f"--sha256 {expected} differs from the policy's {from_policy}")
        expected = expected or from_policy
    limits = Limits(cap=max_size or DEFAULT_MAX_BYTES)

    store = model_store.open_store(model_store.store_dir())
    contacts = Contacts()
    provenance: dict = {"source": str(source)}
    download_url, auth = None, {}
    if isinstance(source, HubSource):
        download_url, auth, hub = _resolve_hub(source, contacts, say)
        provenance.update(hub)
        if expected and hub.get("lfs_sha256") and hub["lfs_sha256"] != expected:
            raise PullError(f"{source}: the hub says its sha256 is {hub['lfs_sha256']}, not the expected {expected}")
        expected = expected or hub.get("lfs_sha256")
        if hub.get("size") is not None:
            limits = replace(limits, stated=hub["size"], stated_by="the hub announced")
    elif isinstance(source, UrlSource):
        download_url = source.url
        if source.url.startswith("http://") and not expected:
            raise PullError(f"{source.url} is not encrypted: give the sha256 to expect (--sha256, or a policy "
                            f"with one) so that the bytes can be checked")
    if policy is not None and expected and limits.stated is None:
        limits = _size_in_lock(policy, expected, limits)

    name = name or file_name(source)
    if not _NAME.fullmatch(name) or not name.endswith(".gguf"):
        raise PullError(f"{printable(repr(name))}: a model's name in the store is letters, digits and ._+- ending "
                        f"in .gguf (--name NAME.gguf)")
    final = store / name

    # Pulling what the store has costs nothing.
    have = (model_store.find_by_sha256(store, expected) if expected
            else model_store.find_by_source(store, str(source)))
    prov = model_store.read_provenance(have) or {} if have is not None else {}
    if have is not None and have.exists() and sha256_of(have) == prov.get("sha256"):
        say(f"{have.name} is in the store already ({prov.get('source')}): nothing to download")
        result = Pulled(have, prov["sha256"], have.stat().st_size, str(source), True, contacts,
                        time.monotonic() - started, prov)
        return _into_policy(result, policy, entry, say)
    if os.path.lexists(final):
        other = None if final.is_symlink() else (model_store.read_provenance(final) or {}).get("source")
        what = f"another model, from {printable(str(other))}" if other else "not a model pulled into this store"
        raise PullError(f"{final} holds something else ({what}); pull this one under another name: "
                        f"--name NAME.gguf")

    # A partial file is resumed only by a pull of the same source.
    if model_store.partial_source(store, name) != str(source):
        model_store.remove_partial(store, name)
    part = model_store.open_partial(store, name)
    keep_partial = False
    try:
        model_store.mark_partial(store, name, str(source))
        if isinstance(source, FileSource):
            say(f"copying {source.path}")
            got, size = _copy(source.path, part, progress)
        else:
            resuming = os.fstat(part).st_size > 0
            say(f"downloading {printable(download_url.split('?')[0])}" + (" (resuming)" if resuming else ""))
            got, size = fetch(download_url, part, contacts, auth=auth, allow_http=expected is not None,
                              limits=limits, pace=pace, progress=progress)
        if expected and got != expected:
            raise PullError(f"{source}: sha256 mismatch: expected {expected}, got {got}; nothing was kept")
        _refuse_what_the_reader_refuses(source, model_store.partial_path(store, name), got)
        final = model_store.take_name(store, name)
    except (DownloadError, KeyboardInterrupt):
        keep_partial = True  # broken off: the bytes so far wait for a resume
        raise
    finally:
        os.close(part)
        if not keep_partial:
            model_store.remove_partial(store, name)
    provenance.update({"sha256": got, "size": size, "file": name,
                       "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "contacted": contacts.hosts(), "checked_against": "expected sha256" if expected else
                       "nothing: no sha256 was given; pin this one in the policy"})
    if download_url:
        provenance["url"] = download_url.split("?")[0]
    model_store.write_provenance(final, provenance)
    remember_sha256(final, got)  # hashed as it was written: `up` need not hash it again
    result = Pulled(final, got, size, str(source), False, contacts, time.monotonic() - started, provenance)
    return _into_policy(result, policy, entry, say)


def _refuse_what_the_reader_refuses(source, path: Path, sha256: str) -> None:
    """The one check of a pulled file's content before it takes its name:
    what `model inspect` cannot read is not kept either. Its facts are kept
    under the sha256 of the bytes pulled: the first `validate` reads none."""
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise PullError(f"{source}: not a GGUF file (it does not start with the GGUF magic bytes); "
                            f"nothing was kept")
    try:
        check_gguf(path, sha256)
    except GgufError as e:
        raise PullError(f"{source}: {str(e).removeprefix(f'{path}: ')}; nothing was kept") from None


def _size_in_lock(policy: Path, sha256: str, limits: Limits) -> Limits:
    """The size the policy's lock states for a model of this sha256, if it has one."""
    lock_file = lock_path(policy)
    if not lock_file.is_file():
        return limits
    try:
        locked = read_lock(lock_file)
    except SandboxError:
        return limits  # `up` and `plan` say what is wrong with it
    for model in locked.get("models") or []:
        if isinstance(model, dict) and model.get("sha256") == sha256 and isinstance(model.get("size"), int):
            return replace(limits, stated=model["size"], stated_by=f"{lock_file} states")
    return limits


def _into_policy(result: Pulled, policy: Path | None, entry: ModelEntry | None, say: Say) -> Pulled:
    if policy is not None and entry is not None:
        text = model_store.policy_path_text(result.path)
        if entry.path != text or entry.sha256 != result.sha256:
            set_model_file(policy, entry, text, result.sha256)
            result.policy_updated = str(policy)
            say(f"{policy}: models[{entry.index}] path {text}, sha256 {result.sha256}")
    return result


def _expected(value: str | None, where: str) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if not _SHA256.fullmatch(value):
        raise PullError(f"{where}: {value!r} is not a sha256 (64 hex digits)")
    return value


def _resolve_hub(source: HubSource, contacts: Contacts, say: Say) -> tuple[str, dict[str, str], dict]:
    """The hub's answer for the file, through huggingface_hub: where to
    download it from, the commit the revision is, and its LFS sha256."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        raise PullError(f"{source}: HF_HUB_OFFLINE is set, so the hub is not asked; import the file instead: "
                        f"sandbox model pull /path/to/{source.filename.rsplit('/', 1)[-1]}")
    # The hub client sends telemetry and, unless told not to, asks the hub for
    # a registry of AI agents before the first request: a contact nobody
    # asked for (docs/models.md). Off, before and after it is imported.
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from huggingface_hub import constants, get_hf_file_metadata, get_token, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from urllib.parse import urljoin, urlsplit
    constants.HF_HUB_DISABLE_TELEMETRY = True
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    url = hf_hub_url(source.repo, source.filename, revision=source.revision, endpoint=endpoint)
    token = get_token()
    if token and urlsplit(endpoint).scheme != "https":
        say(f"{endpoint} is not encrypted: the hub token is not sent to it")
        token = None
    say(f"asking {endpoint} for {source}")
    try:
        meta = get_hf_file_metadata(url, token=token or False, endpoint=endpoint)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "error")
        contacts.add("HEAD", url, status)
        raise PullError(f"{source}: the hub answered {status}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - network errors of whichever HTTP library the hub client uses
        contacts.add("HEAD", url, "no answer")
        raise PullError(f"{source}: cannot reach {endpoint} ({e.__class__.__name__}: {e})") from None
    contacts.add("HEAD", url, 200)
    etag = (meta.etag or "").strip('"').lower()
    location = urljoin(url, meta.location or url)
    # The token goes to the hub's own origin (scheme, host and port) only: not
    # to its CDN, nor to another port or scheme of the hub's host name.
    auth = {origin(endpoint): f"Bearer {token}"} if token else {}
    return location, auth, {
        "repo": source.repo, "revision": source.revision, "commit": meta.commit_hash,
        "filename": source.filename, "endpoint": endpoint,
        "lfs_sha256": etag if _SHA256.fullmatch(etag) else None,
        # No GGUF is empty: a size of 0 is the redirect's own Content-Length, not the file's.
        "size": meta.size if isinstance(meta.size, int) and meta.size > 0 else None}


def _copy(path: Path, part: int, progress: DownloadProgress | None) -> tuple[str, int]:
    digest, done = hashlib.sha256(), 0
    os.ftruncate(part, 0)
    os.lseek(part, 0, os.SEEK_SET)
    with open(path, "rb") as src:
        total = os.fstat(src.fileno()).st_size
        while chunk := src.read(CHUNK):
            write_all(part, chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest(), done


def list_models() -> list[dict]:
    out = []
    for model in model_store.models_in(model_store.store_dir()):
        prov = model_store.read_provenance(model) or {}
        out.append({"path": str(model), "size": model.stat().st_size, "sha256": prov.get("sha256"),
                    "source": prov.get("source"), "commit": prov.get("commit"),
                    "fetched_at": prov.get("fetched_at"), "provenance": bool(prov)})
    return out


def verify_models(files: list[Path] | None = None, progress: Callable[[str, int, int], None] | None = None
                  ) -> list[dict]:
    """Hash each model again, from its bytes (no cache), against its sidecar."""
    models = files or model_store.models_in(model_store.store_dir())
    out = []
    for model in models:
        prov = model_store.read_provenance(model) or {}
        if not model.is_file():
            out.append({"path": str(model), "ok": False, "why": "no such file"})
            continue
        digest, done, total = hashlib.sha256(), 0, model.stat().st_size
        with open(model, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(model.name, done, total)
        got = digest.hexdigest()
        recorded = prov.get("sha256")
        ok = recorded == got
        why = None if ok else ("no provenance sidecar to check against" if not recorded else
                               f"sha256 is {got}, its provenance says {recorded}: the file changed")
        out.append({"path": str(model), "ok": ok, "sha256": got, "why": why})
    return out


def inspect_model(path: Path, context: int | None = None, memory: str | None = None) -> dict:
    facts = read_facts(path)
    need = estimate(facts, context or facts.context_length or 4096)
    machine = this_machine()
    return {"facts": facts.to_dict(), "estimate": need.to_dict(), "describe": need.describe(),
            "warnings": fit_warnings(need, memory, machine, on_gpu=False),
            "machine": {"available_ram": machine.available_ram,
                        "gpus": [{"name": n, "total": t, "free": f} for n, t, f in machine.gpus]}}


def policy_warnings(policy: Policy, on_gpu: bool, display: str | None = None,
                    doc: Document | None = None) -> list[Problem]:
    """What `validate` and `up` warn of: a context longer than the model was
    trained for, and a model that will not fit the memory it is given. A
    model file that lies about itself is a problem (PolicyError), named at
    its path in the policy: llama.cpp would not load it either. `doc` is
    the policy as parsed for its checks, where the warnings point (else the
    file is read again for that alone)."""
    if doc is None:
        doc, _ = load(policy.file)
    name = display or str(policy.file)
    machine = this_machine()
    warnings, refused, needs = [], [], {}
    for i, model in enumerate(policy.models):
        try:
            facts = facts_for(model.path, model.sha256)
        except GgufError as e:
            refused.append(Problem(name, *(doc.mark(("models", i, "path")) if doc else (0, 0)),
                                   f"models[{i}].path", str(e)))
            continue
        where = doc.mark(("models", i, "context_length")) if doc else (0, 0)
        said = context_warning(facts, model.context_length)
        if said:
            warnings.append(Problem(name, *where, f"models[{i}].context_length", f"warning: {said}"))
        needs[i] = estimate(facts, model.context_length)
    if refused:
        raise PolicyError(refused)
    # The embedding model stays loaded in its own server beside whichever
    # chat model is loaded (one at a time), in the same container: each chat
    # model is weighed with it, and it is not weighed alone.
    embedding = next((i for i, m in enumerate(policy.models) if m.role == "embeddings"), None)
    for i, need in needs.items():
        if i == embedding:
            continue
        beside = f"with the embedding model (models[{embedding}]) loaded beside it, " if embedding is not None else ""
        if embedding is not None:
            need = together(need, needs[embedding])
        for said in fit_warnings(need, policy.backend.memory, machine, on_gpu):
            place = doc.mark(("backend", "memory")) if doc else (0, 0)
            warnings.append(Problem(name, *place, f"models[{i}]", f"warning: {beside}{said}"))
    return warnings
