"""The front-end scorecard of docs/frontends.md, measured again.

Each UI runs in a sandbox with `audit: connections` (every outside name
resolves to the sandbox's sink, so each attempt shows what it wanted to
send) over one scripted session: start, one chat typed into its own page in
a real headless Chromium, then a minute idle with the page open. The sink's
records (`sandbox audit`) say what the UI's server tried to reach; the
browser says what the page asked it to fetch from anywhere but the sandbox
(each such request is recorded and stopped in the browser, so none leaves).
Every UI runs with its defaults and, where one exists, with the preset of
its vetted policy. A UI that answers from documents (Open WebUI) then has a
document step: a short file uploaded with its own upload control, and a
question only the file answers; it passes when the UI retrieved the file's
text for it inside the sandbox (the embedding model in the backend) and
nothing tried to reach outside meanwhile. Last, the page is opened once more
in the sandbox's own locked window (`sandbox open NAME --headless --for
SECONDS`) with a proxy that records what the window asks it for in place of
the discard address it sends everything else to: the hosts the page tried
there (launcher/browser.py).

    python scripts/scorecard.py [--ui gradio --ui streamlit ...] [--settings preset] [--idle 60]
                                [--window-for 30] [--json results.json] [--write docs/frontends.md]
    python scripts/scorecard.py --window-only [--ui ...] --write docs/frontends.md
    python scripts/scorecard.py --from-json a.json b.json --write docs/frontends.md

Needs the engine, chromium and playwright (the `browser` extra), the
quick-start model, and the package index for the first builds. `--write`
replaces the table between the scorecard markers of that file;
`--from-json` makes the table from earlier runs' measurements instead;
`--window-only` runs only the locked window's step and fills in that
column of the table already there, leaving the others as measured before.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import MODEL, free_port  # noqa: E402
from launcher.commands.audit import audit  # noqa: E402
from launcher.commands.down import down  # noqa: E402
from launcher.commands.up import up  # noqa: E402
from launcher.engine import DockerGateway  # noqa: E402
from launcher.images import recipe_image  # noqa: E402
from launcher.browser import PROXY_ENV  # noqa: E402
from launcher.recipes import FRONTEND_RECIPES  # noqa: E402
from tests.support.canary import Recorder, hosts_asked  # noqa: E402 - test_window.py's proxy

MESSAGE = "Say hello in one word."
# The document step: a fact only the file holds, and a question on it.
CODE_WORD = "PELICAN-7431"
DOCUMENT = (f"Notes of the harbour office.\nThe secret code word is {CODE_WORD}.\n"
            f"Remember: the secret code word is {CODE_WORD}.\n")
QUESTION = "What is the secret code word? Answer with the code word only."
CHATS = '"POST /v1/chat/completions'  # the backend's access log line of one chat
BEGIN, END = "<!-- scorecard:begin -->", "<!-- scorecard:end -->"
# Of a recipe's settings, those its image needs to start on a read-only root:
# a recipe's "defaults" run keeps these and drops the rest.
RUN_READ_ONLY = ("DATA_DIR", "STATIC_DIR")
WINDOW_HEADER = "its page tried in the locked window (`sandbox open`)"


@dataclass(frozen=True)
class UI:
    name: str
    policy: str  # the vetted policy, under policies/
    input: str  # where a person types in its page (a CSS selector)
    preset: tuple[str, ...] = ()  # the policy's env names that are its privacy preset
    send: str | None = None  # a button to click; None: press Enter
    dismiss: str | None = None  # what a person clicks away first (a "what's new" dialog), if it shows
    recipe_is_preset: bool = False  # defaults: the recipe's image without the settings it locks
    # The document step, for a UI that has one: what opens its attach menu
    # and that menu's item whose file chooser uploads.
    upload: tuple[str, str] | None = None
    about: str = ""

    @property
    def settings(self) -> tuple[str, ...]:
        return ("defaults", "preset") if self.preset or self.recipe_is_preset else ("defaults",)


UIS = (
    UI("chat", "quickstart.yaml", "#input", send="#send", about="our recipe (images/chat)"),
    UI("open-webui", "open-webui.yaml", "#chat-input", recipe_is_preset=True, dismiss="text=Okay, Let's Go!",
       upload=("#input-menu-button", "Upload Files"),
       about="open-webui 0.12.4, our recipe; defaults: the same image without the recipe's settings"),
    UI("gradio", "gradio.yaml", "textarea", ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"),
       about="gradio 6.31.0, ChatInterface (policies/ui/gradio)"),
    UI("streamlit", "streamlit.yaml", "textarea",
       ("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "STREAMLIT_BROWSER_SERVER_ADDRESS"),
       about="streamlit 1.67.0, st.chat_input (policies/ui/streamlit)"),
    UI("chainlit", "chainlit.yaml", "#chat-input, textarea", about="chainlit 2.12.0 (policies/ui/chainlit)"),
)


@dataclass
class Run:
    ui: str
    settings: str  # "defaults" or "preset"
    started_s: float | None = None
    chat_answered: bool = False
    names: list = field(default_factory=list)  # [{"name", "count", "parts"}]
    destinations: list = field(default_factory=list)  # as `sandbox audit` gives them
    page_requests: list = field(default_factory=list)  # [{"host", "kind", "count"}]
    # The document step: "" (the UI has none), "passed", or what went wrong.
    document: str = ""
    # The locked window's step: [{"host", "count"}] asked of its proxy; None: not measured.
    window_requests: list | None = None
    error: str = ""


def policy_for(ui: UI, settings: str, directory: Path) -> Path:
    """The vetted policy, made runnable from `directory`: its own name and a
    free port, `audit: connections`, and for "defaults" without its preset."""
    source = ROOT / "policies" / ui.policy
    policy = yaml.safe_load(source.read_text())
    policy["name"] = f"score-{ui.name}-{settings}"[:30]
    policy["ingress"]["port"] = free_port()
    policy["audit"] = "connections"
    for model in policy["models"]:  # the vetted policies' models, the embedding model too, are the quick-start file
        model["path"] = str(MODEL)
    frontend = policy["frontend"]
    if "build" in frontend:  # a context must lie beside its policy: a copy (the layers come from the cache)
        copy = directory / f"{policy['name']}-context"
        if not copy.exists():
            shutil.copytree(source.parent / frontend["build"]["context"], copy)
        frontend["build"]["context"] = copy.name
    if settings == "defaults":
        for key in ui.preset:
            frontend.get("env", {}).pop(key, None)
        if ui.recipe_is_preset:
            policy["frontend"] = recipe_as_image(frontend)
    path = directory / f"{policy['name']}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def recipe_as_image(frontend: dict) -> dict:
    """A recipe's image run as a front-end of one's own: none of the settings
    the recipe locks, only what it needs to start on a read-only root."""
    recipe = FRONTEND_RECIPES[frontend["recipe"]]
    needed = {k: v for k, v in recipe.locked_env.items() if k in RUN_READ_ONLY}
    if recipe.session_key_env:  # the recipe hands it one (else it writes one next to itself: read-only)
        needed[recipe.session_key_env] = secrets.token_urlsafe(32)  # this run's, thrown away with it
    return {"image": recipe_image(frontend["recipe"]).tag, "port": recipe.port, "user": recipe.user,
            "data": recipe.data, "health_path": recipe.health_path, "memory": recipe.memory, "cpus": recipe.cpus,
            "env": {**frontend.get("env", {}), **needed}}


def chats(gateway: DockerGateway, name: str) -> int:
    return sum(CHATS in line for line in gateway.containers.logs(f"sandbox-{name}-backend", tail=5000))


def one_session(gateway: DockerGateway, browser, ui: UI, settings: str, directory: Path, idle: float,
                window_for: float, say) -> Run:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    run = Run(ui.name, settings)
    path = policy_for(ui, settings, directory)
    name = yaml.safe_load(path.read_text())["name"]
    began = time.monotonic()
    try:
        result = up(gateway, path, say=lambda m: say(f"  {m}"), timeout=900)
        run.started_s = round(time.monotonic() - began, 1)
        if browser is None:  # --window-only
            run.window_requests = window_step(name, window_for)
            say(f"  locked window: {window_asked(run)}")
            return run
        origin = urlsplit(result.url).netloc
        asked: dict[tuple[str, str], int] = {}

        def route(request_route):
            url = urlsplit(request_route.request.url)
            if url.netloc == origin or url.scheme in ("data", "blob"):
                request_route.continue_()
                return
            key = (url.netloc or url.scheme, request_route.request.resource_type)
            asked[key] = asked.get(key, 0) + 1
            request_route.abort()

        def refused(_source, uri: str, directive: str):
            key = (urlsplit(uri).netloc or uri.split(":")[0], directive)
            asked[key] = asked.get(key, 0) + 1

        context = browser.new_context()
        context.route("**/*", route)
        # What the ingress's Content-Security-Policy stopped before it became a request.
        context.expose_binding("sandboxRefused", refused)
        context.add_init_script("document.addEventListener('securitypolicyviolation', "
                                "e => window.sandboxRefused(e.blockedURI, e.effectiveDirective))")
        page = context.new_page()
        page.on("websocket", lambda ws: urlsplit(ws.url).netloc != origin and asked.update(
            {(urlsplit(ws.url).netloc, "websocket"): asked.get((urlsplit(ws.url).netloc, "websocket"), 0) + 1}))
        before = chats(gateway, name)
        page.goto(result.access_link, wait_until="load", timeout=120_000)
        # A page may show its input before its scripts listen to it: type
        # again, as a person would, when nothing reached the backend.
        for _ in range(3):
            if ui.dismiss:
                try:
                    page.locator(ui.dismiss).first.click(timeout=15_000)
                except PlaywrightTimeout:
                    pass  # it did not show
            box = page.locator(ui.input).first
            box.wait_for(state="visible", timeout=180_000)
            time.sleep(2)
            box.click()
            page.keyboard.type(MESSAGE)
            if ui.send:
                page.click(ui.send)
            else:
                page.keyboard.press("Enter")
            deadline = time.monotonic() + 60
            while chats(gateway, name) == before and time.monotonic() < deadline:
                time.sleep(1)
            if chats(gateway, name) > before:
                break
        run.chat_answered = chats(gateway, name) > before
        say(f"  chat {'answered' if run.chat_answered else 'NOT answered'}; idle for {idle:.0f} s")
        time.sleep(idle)
        if ui.upload:
            run.document = document_step(gateway, page, ui, result, directory, asked)
            say(f"  document: {run.document}")
        context.close()
        report = audit(gateway, name)
        run.names = [{k: n[k] for k in ("name", "count", "parts")} for n in report["names"]]
        run.destinations = report["destinations"]
        run.page_requests = [{"host": h, "kind": k, "count": c} for (h, k), c in sorted(asked.items())]
        run.window_requests = window_step(name, window_for)
        say(f"  locked window: {window_asked(run)}")
    except Exception as e:  # noqa: BLE001 - a UI that fails is a row of the table, not the end of it
        run.error = f"{e.__class__.__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        say(f"  failed: {run.error}")
    finally:
        try:
            down(gateway, name, volumes=True)
        except Exception:  # noqa: BLE001
            pass
    return run


def document_step(gateway: DockerGateway, page, ui: UI, result, directory: Path, asked: dict) -> str:
    """Upload DOCUMENT in the chat of step 2 with the UI's own control, ask QUESTION:
    "passed" when the UI retrieved the file's text for the answer and
    neither its server nor its page tried to reach outside meanwhile; else
    what went wrong. Open WebUI's saved chat (read by the page, with its own
    session) holds the sources it put before the question: the check does
    not rest on the small model's wording."""
    from playwright.sync_api import Error as PlaywrightError
    started, asked_before = time.time(), sum(asked.values())
    document = directory / "harbour-notes.txt"
    document.write_text(DOCUMENT)
    opener, item = ui.upload
    try:
        # In the chat of step 2, once its answer is whole (Open WebUI sends
        # nothing while one is streaming): a new chat would load the whole
        # page again through the measuring route, minutes on a loaded machine.
        page.wait_for_selector("button[aria-label='Regenerate']", timeout=600_000)
        page.click(opener)
        with page.expect_response(lambda r: "/process/status" in r.url, timeout=300_000) as processing:
            with page.expect_file_chooser() as chooser:
                page.get_by_role("menuitem", name=item).click()
            chooser.value.set_files(str(document))
        if '"completed"' not in processing.value.body().decode():
            return "not processed"
        page.click(ui.input)
        page.keyboard.type(QUESTION)
        page.keyboard.press("Enter")
        chat_id = page.url.rsplit("/c/", 1)[1]

        def retrieved() -> bool:
            """The file's chunk among the sources saved with an answer of the chat."""
            chat = page.evaluate("""async id => (await fetch(`/api/v1/chats/${id}`,
                {headers: {Authorization: `Bearer ${localStorage.token}`}})).json()""", chat_id)
            return any(CODE_WORD in document for m in chat["chat"]["history"]["messages"].values()
                       for source in m.get("sources") or [] for document in source.get("document") or [])
        deadline = time.monotonic() + 600
        while not (found := retrieved()) and time.monotonic() < deadline:
            time.sleep(2)
    except (PlaywrightError, IndexError) as e:
        return f"failed: {str(e).splitlines()[0][:200]}"
    time.sleep(2)  # the sink writes its summary about once a second
    report = audit(gateway, result.name, since=started - 1)
    tried = len(report["names"]) + len(report["destinations"]) + sum(asked.values()) - asked_before
    if found and tried == 0:
        return "passed"
    return f"{'retrieved' if found else 'not retrieved'}, {tried} attempt(s) outward"


def window_step(name: str, seconds: float) -> list[dict]:
    """The sandbox's page in its own locked window, headless, held `seconds`
    once loaded, with a recording proxy where the window sends every request
    that is not for the sandbox (it answers nothing, so nothing goes
    further): what the window asked it for, by host."""
    proxy = Recorder()
    try:
        done = subprocess.run([sys.executable, "-m", "launcher", "open", name, "--headless", "--for", str(seconds)],
                              capture_output=True, text=True, timeout=seconds + 300, cwd=ROOT,
                              env={**os.environ, PROXY_ENV: proxy.address})
        if done.returncode != 0:
            raise RuntimeError(f"sandbox open: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
        return hosts_asked(proxy.lines)
    finally:
        proxy.close()


def window_asked(run: Run) -> str:
    if run.window_requests is None:
        return f"(failed: {run.error})" if run.error else "not measured"
    return "<br>".join(f"`{w['host']}` x{w['count']}" for w in run.window_requests) or "nothing"


def reached(run: Run) -> str:
    """What the UI's server tried, one destination per item."""
    if run.error:
        return f"(failed: {run.error})"
    items = []
    for d in run.destinations:
        where = f"{d['name'] or d['address']}:{d['port']}"
        items.append(f"{where} ({'; '.join(d['said'])}) x{d['count']}")
    connected = {d["name"] for d in run.destinations if d["name"]}
    items += [f"{n['name']} (looked up only) x{n['count']}" for n in run.names if n["name"] not in connected]
    return "<br>".join(f"`{i}`" for i in items) or "nothing"


def page_asked(run: Run) -> str:
    if run.error:
        return ""
    return "<br>".join(f"`{p['host']}` ({p['kind']}) x{p['count']}" for p in run.page_requests) or "nothing"


def table(runs: list[Run]) -> str:
    lines = ["| UI | settings | ready in | chat | its server tried to reach (all ended at the sink) "
             f"| its page tried to have the browser fetch (stopped) | document | {WINDOW_HEADER} |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.ui} | {r.settings} | {'' if r.started_s is None else f'{r.started_s} s'} "
                     f"| {'answered' if r.chat_answered else 'no answer'} | {reached(r)} | {page_asked(r)} "
                     f"| {r.document or 'n/a'} | {window_asked(r)} |")
    lines.append("")
    shown = {r.ui for r in runs}
    for u in UIS:
        if u.name in shown:
            preset = ", ".join(u.preset) or ("the recipe" if u.recipe_is_preset else "none")
            lines.append(f"- {u.name}: {u.about}; preset: {preset}")
    return "\n".join(lines)


def fill_window_column(text: str, runs: list[Run]) -> str:
    """The scorecard's table (`text`, as table() writes it, or one from
    before the window column: the column is added, "not measured") with
    each run's window cell put in its row (the UI and settings); the other
    cells as they were."""
    lines = text.split("\n")
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    header, separator, body = rows[0], rows[1], rows[2:]
    had = WINDOW_HEADER in lines[header]
    cells = {(r.ui, r.settings): window_asked(r) for r in runs}
    if not had:
        lines[header] += f" {WINDOW_HEADER} |"
        lines[separator] += "---|"
    for i in body:
        row = [cell.strip() for cell in lines[i].strip().strip("|").split(" | ")]
        cell = cells.get((row[0], row[1]), row[-1] if had else "not measured")
        lines[i] = "| " + " | ".join(row[:-1] if had else row) + f" | {cell} |"
    return "\n".join(lines)


def read_table(document: Path) -> str:
    match = re.search(re.escape(BEGIN) + "\n(.*?)\n" + re.escape(END), document.read_text(), re.S)
    if not match:
        raise SystemExit(f"{document}: no {BEGIN} ... {END} markers to read between")
    return match.group(1)


def write_into(document: Path, text: str) -> None:
    content = document.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{document}: no {BEGIN} ... {END} markers to write between")
    document.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", content))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ui", action="append", choices=[u.name for u in UIS], help="only these (repeatable)")
    parser.add_argument("--settings", action="append", choices=("defaults", "preset"),
                        help="only these runs of each UI (repeatable)")
    parser.add_argument("--idle", type=float, default=60, help="seconds idle after the chat (default 60)")
    parser.add_argument("--window-for", type=float, default=30,
                        help="seconds the locked window is held once its page has loaded (default 30)")
    parser.add_argument("--window-only", action="store_true",
                        help="only the locked window's step; --write fills in that column of the table there")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--write", type=Path, help="put the table into this file, between its markers")
    parser.add_argument("--from-json", type=Path, nargs="+", help="no runs: the table of these measurements")
    args = parser.parse_args()
    if args.from_json:
        order = [u.name for u in UIS]
        runs = [Run(**r) for f in args.from_json for r in json.loads(f.read_text())]
        runs.sort(key=lambda r: (order.index(r.ui), r.settings))
        print(table(runs))
        if args.write:
            write_into(args.write, table(runs))
        return 0
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("needs chromium (apt-get install chromium)")
    gateway = DockerGateway()
    chosen = [u for u in UIS if not args.ui or u.name in args.ui]
    runs: list[Run] = []
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.window_only:
        with tempfile.TemporaryDirectory() as directory:
            for ui in chosen:
                for settings in [s for s in ui.settings if not args.settings or s in args.settings]:
                    say(f"{ui.name}, {settings}: the locked window only")
                    runs.append(one_session(gateway, None, ui, settings, Path(directory), 0, args.window_for, say))
        if args.json:
            args.json.write_text(json.dumps([r.__dict__ for r in runs], indent=2, default=str))
        if args.write:
            write_into(args.write, fill_window_column(read_table(args.write), runs))
            print(read_table(args.write))
        return 0 if all(not r.error for r in runs) else 1
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as directory, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        for ui in chosen:
            for settings in [s for s in ui.settings if not args.settings or s in args.settings]:
                say(f"{ui.name}, {settings}")
                runs.append(one_session(gateway, browser, ui, settings, Path(directory), args.idle,
                                        args.window_for, say))
        browser.close()
    text = table(runs)
    print(text)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in runs], indent=2, default=str))
    if args.write:
        write_into(args.write, text)
    # A UI run with its defaults may fail the document step (Open WebUI's
    # would fetch an embedding model): that is what the table is for.
    return 0 if all(r.chat_answered and not r.error and (r.document in ("", "passed") or r.settings == "defaults")
                    for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
