"""The command line: each command parses, calls one library function, and
renders the result as text for people or, with --json, for programs.
Errors a user can act on are printed as messages, never as tracebacks."""
from __future__ import annotations

import functools
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from launcher.errors import PolicyError, SandboxError
from launcher.text import json_text, one_line, printable
from launcher.views import (Progress, err, followed_line, out, print_actions, render_audit, render_env,
                            render_status, render_verify)

app = typer.Typer(
    help="Run a local llama.cpp backend and a chat front-end in a hardened Docker sandbox "
         "with no route to the internet, the LAN or the host. The UI is served at 127.0.0.1 only.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


JSON = typer.Option(False, "--json", help="Print the result as JSON for programs.")
ALLOWED_SIGNERS = typer.Option(
    None, "--allowed-signers", envvar="SANDBOX_ALLOWED_SIGNERS", dir_okay=False, resolve_path=True,
    help="Who may sign policies: an allowed-signers file in git's format. When set (here, in the "
         "environment, or as allowed_signers: in ~/.config/sandbox/config.yaml) only policies whose lock "
         "one of them signed run.")
POLICY = typer.Argument(..., help="The policy file.")
TARGET = typer.Argument(None, help="Sandbox name or policy file; may be left out when only one sandbox exists.")
CA_BUNDLE = typer.Option(
    None, "--ca-bundle", envvar="SANDBOX_CA_BUNDLE", exists=True, dir_okay=False, resolve_path=True,
    help="Extra CA certificates (PEM) that image builds must trust, for networks that intercept TLS.")


def _gateway():
    from launcher.engine import DockerGateway
    return DockerGateway()


def handled(fn):
    """Turn a SandboxError into a message on stderr and its exit code."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PolicyError as e:
            if kwargs.get("as_json"):
                out.print_json(data={"ok": False, "problems": [p.to_dict() for p in e.problems]})
            for problem in e.problems:
                err.print(str(problem), markup=False)
            raise typer.Exit(e.exit_code) from None
        except SandboxError as e:
            if kwargs.get("as_json"):
                out.print_json(data={"ok": False, "error": str(e)})
            err.print(printable(f"error: {e}", keep_newlines=True), markup=False)
            raise typer.Exit(e.exit_code) from None
    return wrapper


@app.command()
@handled
def validate(files: List[Path] = typer.Argument(..., help="Policy files to check."),
             no_port_check: bool = typer.Option(False, "--no-port-check",
                                                help="Do not check that the host port is free."),
             no_model_files: bool = typer.Option(False, "--no-model-files",
                                                 help="Do not look at the model files (a repository of "
                                                      "policies holds no weights)."),
             strict: bool = typer.Option(False, "--strict",
                                         help="Also require a lock that pins this very policy, and a good "
                                              "signature of it (by an allowed signer, when they are set)."),
             allowed_signers: Optional[Path] = ALLOWED_SIGNERS,
             as_json: bool = JSON):
    """Check policy files: the schema, the model files and their sha256, and the host port.

    Every problem is listed as FILE:LINE:COLUMN FIELD: MESSAGE. Exits 2 if any."""
    from launcher.commands.validate import validate as run_validate
    progress = Progress()
    results = []
    for checked in run_validate(files, _gateway, check_port=not no_port_check, check_model_files=not no_model_files,
                                strict=strict, allowed_signers=allowed_signers, hash_progress=progress.hashing):
        results.append(checked)
        if not as_json:
            for p in checked.problems + checked.warnings:
                err.print(str(p), markup=False)
            if checked.ok:
                out.print(checked.summary, markup=False)
    if as_json:
        out.print_json(data={"ok": all(r.ok for r in results), "files": [r.to_dict() for r in results]})
    if not all(r.ok for r in results):
        raise typer.Exit(PolicyError.exit_code)


@app.command()
@handled
def plan(policy: Path = POLICY, ca_bundle: Optional[Path] = CA_BUNDLE,
         as_json: bool = JSON):
    """Show what `up` would build, create, recreate, keep or remove, and why. Changes nothing."""
    from launcher.commands.bundle import is_bundle
    from launcher.commands.prepare import prepare
    if is_bundle(policy):
        raise SandboxError(f"{policy} is a bundle: `sandbox up {policy}` checks and starts it")
    progress = Progress()
    prepared = prepare(_gateway(), policy, ca_bundle, hash_progress=progress.hashing)
    actions = prepared.plan.actions
    if as_json:
        out.print_json(data={"name": prepared.spec.name, "url": prepared.spec.url,
                             "actions": [a.to_dict() for a in actions]})
        return
    print_actions(actions)
    changes = len(prepared.plan.changes)
    out.print(f"\n{changes} change(s) for sandbox {prepared.spec.name}" if changes
              else f"\nsandbox {prepared.spec.name} is up to date", markup=False)


@app.command()
@handled
def up(policy: Path = POLICY, ca_bundle: Optional[Path] = CA_BUNDLE,
       timeout: float = typer.Option(600, help="Seconds to wait for the backend and the UI to be ready."),
       then_verify: bool = typer.Option(False, "--verify", help="Run `sandbox verify` once it is up."),
       new_token: bool = typer.Option(False, "--new-token",
                                      help="Make a new access token; links and cookies given out before stop working."),
       relock: bool = typer.Option(False, "--relock",
                                   help="The policy changed on purpose: write its lock anew instead of refusing."),
       allowed_signers: Optional[Path] = ALLOWED_SIGNERS,
       as_json: bool = JSON):
    """Build and start the sandbox a policy (or a bundle) describes, wait until it answers, and print its URL.

    Running it again changes nothing unless the policy (or an image recipe) changed. A policy with a lock
    (POLICY.lock) must still resolve to what the lock pins. A bundle's images are loaded, never built."""
    from launcher.commands.up import up as run_up
    progress = Progress()
    try:
        result = run_up(_gateway(), policy, ca_bundle=ca_bundle, timeout=timeout, say=progress.say,
                        on_build_line=progress.build_line, hash_progress=progress.hashing, new_token=new_token,
                        relock=relock, allowed_signers=allowed_signers)
    except KeyboardInterrupt:
        progress.close()
        # Whatever had started keeps running: say so, and how to go on.
        from launcher.commands.target import name_in
        name = name_in(None, policy) or "(unnamed)"
        err.print(printable(f"interrupted: sandbox {name} may be partly up. `sandbox up {policy}` finishes the "
                            f"job; `sandbox down {name}` removes what was started; `sandbox status {name}` shows it."),
                  markup=False)
        raise typer.Exit(130) from None
    finally:
        progress.close()
    checked = None
    if then_verify:
        from launcher.commands.verify import verify as run_verify
        checked = run_verify(_gateway(), result.name, ca_bundle=ca_bundle, say=progress.say,
                             prepared=result.prepared)
        progress.close()
    if as_json:
        data = {"ok": checked is None or checked.ok, **result.to_dict()}
        if checked:
            data["verify"] = checked.to_dict()
        out.print_json(data=data)
    else:
        changes = len(result.prepared.plan.changes)
        out.print(f"sandbox {result.name} is up ({changes} change(s), {result.seconds['total']:.1f} s)",
                  markup=False)
        if result.prepared.spec.api_only:
            out.print(f"it serves only the API, at {result.url}v1/ (no front-end): `sandbox env {result.name}` "
                      "prints its address and token for your scripts and editor", markup=False)
        else:
            out.print(f"open {result.access_link}", markup=False)
            out.print("(the link is your key to this sandbox: `sandbox open` opens it in your browser)",
                      markup=False)
        if checked:
            out.print("")
            render_verify(checked, as_json=False)
    if checked and not checked.ok:
        raise typer.Exit(1)


@app.command("open")
@handled
def open_ui(target: Optional[str] = TARGET,
            print_only: bool = typer.Option(False, "--print", help="Print the access link; open no browser."),
            system_browser: bool = typer.Option(False, "--system-browser",
                                                help="Open your usual browser, which the UI's page can lead elsewhere."),
            headless: bool = typer.Option(False, "--headless", help="Open the locked window headless (for scripts)."),
            seconds: float = typer.Option(0.0, "--for", min=0, help="With --headless: keep the loaded page open "
                                                                     "this many seconds, then close it."),
            browser_kind: Optional[str] = typer.Option(None, "--browser", metavar="chromium|firefox",
                                                       help="The locked window's browser (default: Chromium or "
                                                            "Chrome where found, else Firefox).")):
    """Open a sandbox's UI in a locked browser window of its own (a Chromium or Firefox profile that reaches the
    sandbox and nothing else), logged in with its access link."""
    from launcher.commands.open import (SYSTEM_BROWSER_CAVEAT, access_link, open_headless, open_in_browser,
                                        open_locked, origin)
    if sum((print_only, system_browser, headless)) > 1:
        raise SandboxError("choose one of --print, --system-browser and --headless")
    if seconds and not headless:
        raise SandboxError("--for goes with --headless (a window you see stays until you close it)")
    if browser_kind and (print_only or system_browser):
        raise SandboxError("--browser chooses the locked window's browser: not with --print or --system-browser")
    from launcher.commands.target import resolve_name
    from launcher.mutex import one_command_at_a_time
    name = resolve_name(_gateway(), target, "open")
    # Not while an `up` or a `down` of the sandbox runs: either closes the
    # sandbox's locked window before its ingress goes, and a window opened
    # meanwhile would outlive it (docs/security.md).
    with one_command_at_a_time(name, Progress().say):
        name, link = access_link(_gateway(), name)
        if headless:
            found, loaded = open_headless(_gateway(), name, link, seconds, browser_kind)
        elif not (print_only or system_browser):
            found, profile = open_locked(name, link, browser_kind)
    if print_only:
        out.print(link, markup=False)
    elif headless:
        if not loaded:
            # A window of this sandbox already open holds its profile: the new one hands over to it and ends.
            raise SandboxError(f"sandbox {name}'s page did not load in the locked window ({found.path}); "
                               f"if a window of it is open already, close it first")
        # Firefox is not asked (launcher/browser.py): what is known is that the ingress let the window in.
        got = "the page loaded" if found.kind == "chromium" else "the ingress let it in by the access link"
        err.print(f"opened sandbox {name} in a locked headless {found.kind} window ({found.path}); "
                  f"{got} and it was closed after {seconds:g} s", markup=False)
    elif system_browser:
        if open_in_browser(name, link):
            err.print(f"opened sandbox {name} in {SYSTEM_BROWSER_CAVEAT}", markup=False)
        else:
            err.print("no browser could be started here; open this link yourself (it is your key to the sandbox):",
                      markup=False)
            out.print(link, markup=False)
    else:
        err.print(f"opened sandbox {name} in a locked {found.kind} window ({found.path}, profile {profile}): "
                  f"it reaches {origin(link)} and nothing else", markup=False)


@app.command()
@handled
def env(target: Optional[str] = TARGET, as_json: bool = JSON):
    """Print OPENAI_BASE_URL and OPENAI_API_KEY for the sandbox's OpenAI-compatible API (/v1/), as
    `export` lines: `eval "$(sandbox env)"`, then run a script or an editor that uses the openai SDK.

    The API key printed is the sandbox's API token, made of its access token: it opens the API only
    (not the UI), but uses the model as you, so keep its output out of shared terminals, logs and
    files others can read."""
    from launcher.commands.env import api_env
    render_env(api_env(_gateway(), target), as_json)


@app.command()
@handled
def verify(target: Optional[str] = TARGET,
           ca_bundle: Optional[Path] = CA_BUNDLE, as_json: bool = JSON):
    """Attack a running sandbox from inside its front-end and print one line per attack of the threat
    model: PASS when it was stopped. Exits 1 if any attack got through."""
    from launcher.commands.verify import verify as run_verify
    progress = Progress()
    try:
        result = run_verify(_gateway(), target, ca_bundle=ca_bundle, say=progress.say)
    finally:
        progress.close()
    render_verify(result, as_json)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
@handled
def audit(target: Optional[str] = TARGET,
          since: Optional[str] = typer.Option(None, "--since", help="Only what happened since: 10m, 2h, 1d, or "
                                                                    "a time such as 2026-11-29T17:00."),
          follow: bool = typer.Option(False, "--follow", "-f", help="Then keep printing each new attempt."),
          as_json: bool = JSON):
    """Show what a sandbox's parts tried to reach: every outside name they looked up, every
    connection or datagram to an outside address with what it said (TLS server name, HTTP request),
    and every request the ingress refused (proxy requests, foreign Host or Origin, no access token).
    Nothing ever got out: the sink took each attempt. With `audit: connections` in the policy, names
    resolve to the sink, so the connections show what a part wanted to send.

    The records outlive the sandbox's containers until `sandbox down --volumes`."""
    from launcher.commands.audit import audit as run_audit
    from launcher.commands.audit import follow as follow_audit
    from launcher.commands.audit import since_time
    result = run_audit(_gateway(), target, since=since_time(since) if since else None)
    if as_json and not follow:
        out.print_json(data=result)
        return
    if not as_json:
        render_audit(result)
    if follow:
        if not as_json:
            err.print("following new attempts (Ctrl-C ends)", markup=False)
        try:
            for entry in follow_audit(_gateway(), result["name"]):
                out.print(json_text(entry, indent=None) if as_json else followed_line(entry), markup=False)
        except KeyboardInterrupt:
            pass


@app.command()
@handled
def down(target: Optional[str] = TARGET,
         volumes: bool = typer.Option(False, "--volumes", help="Also delete the front-end's data (chat history), the audit records "
                                                             "and the access token."),
         as_json: bool = JSON):
    """Stop and remove a sandbox. Its data and audit volumes are kept unless --volumes is given."""
    from launcher.commands.down import down as run_down
    progress = Progress()
    result = run_down(_gateway(), target, volumes=volumes, say=None if as_json else progress.say)
    if as_json:
        out.print_json(data={"ok": True, **result})
    elif result["removed"]:
        out.print(f"sandbox {result['name']} removed", markup=False)
    else:
        out.print(f"sandbox {result['name']}: nothing to remove", markup=False)


@app.command()
@handled
def status(target: Optional[str] = typer.Argument(None, help="Sandbox name or policy file; all when left out."),
           memory: bool = typer.Option(False, "--memory", help="Also show each part's memory use."),
           as_json: bool = JSON):
    """Show each sandbox's parts, their state and health, the URL of its UI and what its volumes hold.

    With --json, also its access token and link (for the user who started it)."""
    from launcher.commands.status import status as run_status
    sandboxes = run_status(_gateway(), target, memory=memory)
    if as_json:
        out.print_json(data={"sandboxes": sandboxes})
        return
    render_status(sandboxes, memory)
    if not all(s["healthy"] for s in sandboxes):
        raise typer.Exit(1)


@app.command()
@handled
def lock(policy: Path = POLICY, ca_bundle: Optional[Path] = CA_BUNDLE,
         as_json: bool = JSON):
    """Pin what a policy resolves to in POLICY.lock; `up` then refuses any drift from it.

    The lock holds the policy's sha256, each image's build inputs and ID, each model's sha256 and size,
    the schema and the launcher version. Missing images are built first. Review its diff like the policy's."""
    from launcher.commands.lock import lock as run_lock
    progress = Progress()
    try:
        path, locked, unsigned = run_lock(_gateway(), policy, ca_bundle, say=progress.say,
                                          on_build_line=progress.build_line, hash_progress=progress.hashing)
    finally:
        progress.close()
    if as_json:
        out.print_json(data={"ok": True, "lock_file": str(path), "lock": locked, "signature_removed": unsigned})
        return
    out.print(f"wrote {path}", markup=False)
    for part, image in locked["images"].items():
        out.print(f"  {part:<9} {image['tag']}  {image['id']}", markup=False)
    for model in locked["models"]:
        out.print(f"  model     {model['alias']}  sha256 {model['sha256']}  {model['size']} bytes", markup=False)
    if unsigned:
        err.print("its old signature no longer matched and was removed: `sandbox sign` it again", markup=False)


@app.command()
@handled
def sign(policy: Path = typer.Argument(..., help="The policy file (its lock must be current)."),
         key: Path = typer.Option(..., "--key", exists=True, dir_okay=False, resolve_path=True,
                                  help="Your SSH private key (or its .pub, with the key in ssh-agent)."),
         as_json: bool = JSON):
    """Sign a policy's lock, and with it the policy, with an SSH key (OpenSSH's format, as git uses).

    Writes POLICY.lock.sig. Commit it beside the policy and its lock."""
    from launcher.commands.lock import sign_policy
    signature, signer = sign_policy(policy, key)
    if as_json:
        out.print_json(data={"ok": True, "signature": str(signature), "key": signer.key})
        return
    out.print(f"wrote {signature} (signed with {signer.key})", markup=False)


@app.command("verify-signature")
@handled
def verify_signature(policy: Path = POLICY,
                     allowed_signers: Optional[Path] = ALLOWED_SIGNERS, as_json: bool = JSON):
    """Check that an allowed signer signed the policy's lock and that neither changed since.

    Exits 0 and names the signer, or exits 2 saying what is wrong. (`sandbox verify` attacks a running sandbox.)"""
    from launcher.commands.lock import verify_signature as run_verify_signature
    signer = run_verify_signature(policy, allowed_signers)
    if as_json:
        out.print_json(data={"ok": True, "signed_by": signer.to_dict()})
        return
    out.print(f"{policy}: signed by {signer.principal} ({signer.key})", markup=False)


@app.command()
@handled
def bundle(policy: Path = typer.Argument(..., help="The policy file (it must be locked)."),
           output: Path = typer.Option(..., "-o", "--output", dir_okay=False, help="The bundle file to write."),
           models: bool = typer.Option(False, "--models", help="Carry the model files too."),
           as_json: bool = JSON):
    """Write one file that carries a locked policy to a machine with no network.

    It holds the images, the policy, its lock and signature (and, with --models, the weights).
    `sandbox up FILE` there checks every hash, loads it and starts the sandbox without building or pulling."""
    from launcher.commands.bundle import make_bundle
    progress = Progress()
    started = time.monotonic()
    try:
        manifest = make_bundle(_gateway(), policy, output, models=models, say=None if as_json else progress.say)
    finally:
        progress.close()
    size = output.stat().st_size
    if as_json:
        out.print_json(data={"ok": True, "bundle": str(output), "bytes": size, "manifest": manifest})
        return
    out.print(f"wrote {output} ({size / 2**20:.0f} MiB, {time.monotonic() - started:.1f} s): "
              f"{len(manifest['files'])} files, sandbox {manifest['name']}", markup=False)


@app.command()
@handled
def render(policy: Path = POLICY,
           target: str = typer.Option(..., "--target", help="kubernetes or compose."),
           output: Optional[Path] = typer.Option(None, "-o", "--output", dir_okay=False,
                                                 help="Write here (readable by you only: it holds the "
                                                      "sandbox's secrets) instead of to standard output."),
           model_volume: str = typer.Option("models", "--model-volume",
                                            help="kubernetes: the PersistentVolumeClaim holding the model files."),
           image_prefix: str = typer.Option("", "--image-prefix",
                                            help="kubernetes: the registry path the cluster pulls the images "
                                                 "from, as registry.example.org/sandbox/."),
           gpus: int = typer.Option(0, "--gpus", min=0, help="GPUs for the backend (for gpu: auto or all)."),
           data_size: str = typer.Option("1Gi", "--data-size", help="kubernetes: the front-end's data volume.")):
    """Write the sandbox a policy describes for another engine: Kubernetes manifests or a compose file.

    The same spec as `sandbox up`, with the same isolation (docs/kubernetes.md). Fresh secrets each time."""
    from launcher.commands.render import render_for, write_rendered
    text, spec = render_for(policy, target, model_volume=model_volume, image_prefix=image_prefix, gpus=gpus,
                            data_size=data_size)
    if output is None:
        out.print(text, markup=False, end="")
        return
    err.print(write_rendered(output, text, spec, target), markup=False)


model_app = typer.Typer(help="Get models once, from a source you can name, and check them: pull, list, "
                             "verify, inspect.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("pull")
@handled
def model_pull(source: str = typer.Argument(..., help="hf://OWNER/REPO@REVISION/FILE.gguf, an https:// URL, "
                                                      "or a file on this machine."),
               sha256: Optional[str] = typer.Option(None, "--sha256", help="The sha256 the file must have."),
               policy: Optional[Path] = typer.Option(None, "--policy", exists=True, dir_okay=False,
                                                     help="Fill in this policy's model path and sha256 (keeping its "
                                                          "comments); its sha256, if any, is the one expected."),
               alias: Optional[str] = typer.Option(None, "--alias", help="Which of the policy's models."),
               name: Optional[str] = typer.Option(None, "--name", help="The file's name in the store."),
               max_size: Optional[str] = typer.Option(None, "--max-size",
                                                      help="The most a download may bring (e.g. 80g); 64g "
                                                           "if not given."),
               as_json: bool = JSON):
    """Download (or import) a GGUF model into the model store, check its sha256, and record where it came from.

    Prints every host it contacted. An interrupted download resumes; a file with the wrong sha256 is not kept."""
    from launcher.commands.model import PullError, pull
    from launcher.models.facts import gib
    from launcher.spec import memory_bytes
    cap = None
    if max_size is not None:
        try:
            cap = memory_bytes(max_size)
        except ValueError:
            raise PullError(f"--max-size {printable(max_size)!r}: a size such as 80g, 512m or 1000000") from None
    last = [0.0]

    def progress(done: int, total: int | None) -> None:
        if as_json or (time.monotonic() - last[0] < 2 and done != total):
            return
        last[0] = time.monotonic()
        share = f"{done * 100 // total}% of {gib(total)}" if total else gib(done)
        err.print(f"  {share}", markup=False)

    result = pull(source, sha256=sha256, policy=policy, alias=alias, name=name,
                  say=None if as_json else Progress().say, progress=progress, max_size=cap)
    if as_json:
        out.print_json(data={"ok": True, **result.to_dict()})
        return
    verb = "already in the store" if result.reused else f"pulled in {result.seconds:.1f} s"
    out.print(f"{result.path}: {verb}", markup=False)
    out.print(f"  sha256 {result.sha256}  {result.size} bytes", markup=False)
    out.print(f"  source {result.source}", markup=False)
    if result.provenance.get("commit"):
        out.print(f"  commit {result.provenance['commit']}", markup=False)
    contacted = result.contacts.requests
    out.print(f"  contacted: {'nothing' if not contacted else ''}", markup=False)
    for r in contacted:
        out.print(f"    {r['method']} {r['scheme']}://{r['host']}:{r['port']}{r['path']} -> {r['status']}",
                  markup=False)
    if result.policy_updated:
        out.print(f"  updated {result.policy_updated}", markup=False)


@model_app.command("list")
@handled
def model_list(as_json: bool = JSON):
    """The models in the store, with where each came from."""
    from launcher.commands.model import list_models
    from launcher.models.store import store_dir
    models = list_models()
    if as_json:
        out.print_json(data={"store": str(store_dir()), "models": models})
        return
    out.print(f"model store {store_dir()}", markup=False)
    if not models:
        out.print("  (empty: `sandbox model pull SOURCE`)", markup=False)
    for m in models:
        out.print(f"  {Path(m['path']).name}  {m['size']} bytes  sha256 {m['sha256'] or '(unknown)'}", markup=False)
        out.print(f"    from {m['source'] or '(no provenance)'}" + (f" at {m['commit']}" if m["commit"] else "")
                  + (f", {m['fetched_at']}" if m["fetched_at"] else ""), markup=False)


@model_app.command("verify")
@handled
def model_verify(files: Optional[List[Path]] = typer.Argument(None, help="Model files; all in the store if none."),
                 as_json: bool = JSON):
    """Hash models again, byte by byte, and compare with their recorded sha256. Exits 1 if any differs."""
    from launcher.commands.model import verify_models
    progress = Progress()
    results = verify_models([f.resolve() for f in files] if files else None,
                            progress=None if as_json else lambda n, d, t: progress.hashing(d, t, n))
    if as_json:
        out.print_json(data={"ok": all(r["ok"] for r in results), "models": results})
    else:
        for r in results:
            out.print(f"{r['path']}: {'ok' if r['ok'] else 'FAILED: ' + r['why']}", markup=False)
        if not results:
            out.print("no models to verify", markup=False)
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


@model_app.command("inspect")
@handled
def model_inspect(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A GGUF file."),
                  context: Optional[int] = typer.Option(None, "--context", min=1,
                                                        help="Context length to size the KV cache for "
                                                             "(default: the model's own)."),
                  memory: Optional[str] = typer.Option(None, "--memory", help="A memory limit to check, as 4g."),
                  as_json: bool = JSON):
    """What a GGUF file says of itself (without loading the weights), and the memory it needs."""
    from launcher.commands.model import inspect_model
    from launcher.models.facts import gib
    found = inspect_model(file, context, memory)
    if as_json:
        out.print_json(data=found)
        return
    f = found["facts"]
    # A model's text is the file's maker's: each on its own line, and short.
    rows = [("architecture", one_line(f["architecture"])), ("name", one_line(f["name"]) if f["name"] else "-"),
            ("parameters", f"{f['parameters'] / 1e9:.2f} B" if f["parameters"] >= 1e9 else
             f"{f['parameters'] / 1e6:.0f} M"),
            ("quantization", one_line(f["quantization"])), ("trained context", str(f["context_length"] or "-")),
            ("layers", str(f["layers"] or "-")), ("chat template", "yes" if f["chat_template"] else "no"),
            ("file", f"{gib(f['size_bytes'])}"), ("needs", found["describe"])]
    for key, value in rows:
        out.print(f"{key:<16} {value}", markup=False)
    machine = found["machine"]
    if machine["available_ram"]:
        out.print(f"{'free memory':<16} {gib(machine['available_ram'])}", markup=False)
    for gpu in machine["gpus"]:
        out.print(f"{'GPU':<16} {gpu['name']}: {gib(gpu['free'])} free of {gib(gpu['total'])}", markup=False)
    for warning in found["warnings"]:
        err.print(f"warning: {warning}", markup=False)


@app.command()
@handled
def logs(target: Optional[str] = typer.Argument(None, metavar="SANDBOX",
                                                help="Sandbox name or policy file; may be left out when only one "
                                                     "sandbox exists."),
         part: Optional[str] = typer.Argument(None, metavar="PART", help="dns, backend, frontend or ingress."),
         sandbox: Optional[str] = typer.Option(None, "--sandbox", "-s",
                                               help="The sandbox, as in `sandbox logs PART -s SANDBOX`."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
         tail: int = typer.Option(100, "--tail", "-n", help="Lines from the end to start with.")):
    """Print the log of one part of a sandbox: `sandbox logs SANDBOX PART`, or `sandbox logs PART` when only
    one sandbox exists."""
    from launcher.commands.logs import logs as run_logs
    from launcher.commands.logs import sandbox_and_part
    sandbox, part = sandbox_and_part(target, part, sandbox)
    try:
        for line in run_logs(_gateway(), part, sandbox, tail=tail, follow=follow):
            out.print(printable(line), markup=False)
    except KeyboardInterrupt:
        pass


@app.command()
@handled
def doctor(port: List[int] = typer.Option([8080], "--port", help="Host ports to check are free."),
           as_json: bool = JSON):
    """Check this machine: the Docker engine, the base image, GPU support, gVisor, volume sizes, free ports."""
    from launcher.commands.doctor import FAIL, doctor as run_doctor
    checks = run_doctor(_gateway, tuple(port))
    if as_json:
        out.print_json(data={"ok": all(c.result != FAIL for c in checks), "checks": [c.to_dict() for c in checks]})
    else:
        for c in checks:
            out.print(f"{c.result.upper():5} {c.name}: {c.detail}", markup=False)
            if c.fix and c.result != "ok":
                out.print(f"      fix: {c.fix}", markup=False)
    if any(c.result == FAIL for c in checks):
        raise typer.Exit(1)


def _terminated(signum, frame):
    # As for Ctrl-C: clean-ups in `finally` blocks run (a build's proxy and
    # network are removed) instead of the process vanishing mid-step.
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
