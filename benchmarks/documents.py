"""What documents cost in an Open WebUI sandbox with an embedding model: one
sandbox of the open-webui recipe whose policy names the quick-start model for
chat and again for embeddings (as tests/integration/test_open_webui.py does),
and, for --rounds rounds, through the ingress as the page does it:

1. a 1 MB plain-text document, from its upload until Open WebUI reports its
   processing done (extracted, cut into chunks, each embedded by the
   backend's embedding server, stored);
2. a 50-page PDF, made here (make_pdf: one text page object per page, no
   new dependency), the same way; each round also checks that Open WebUI
   read it (its processing ended "completed" and its extracted text holds the
   phrase on page 37) and asks its retrieval for that phrase;
3. the time to the first streamed token of a chat answer to a question whose
   answer is only in the 1 MB document, with the document attached (Open
   WebUI retrieves from it first) and without it (ratio). Each question is
   the first of a new chat; which goes first alternates round to round.

Prints a table (figure | median (min-max) | rounds); --json prints the same
figures as JSON. Needs the engine, the images (the open-webui image is large:
`sandbox up policies/open-webui.yaml` once) and the quick-start model.

    python benchmarks/documents.py [--rounds 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import MODEL, free_port  # noqa: E402
from launcher.access import cookie_name, open_ui  # noqa: E402
from launcher.commands.down import down  # noqa: E402
from launcher.commands.up import up  # noqa: E402
from launcher.engine import DockerGateway  # noqa: E402

NAME = "bench-documents"
CHAT_ALIAS = "smollm2"
# The fact only the 1 MB document holds, and a question the tiny model can
# answer by repeating what the retrieved text says.
CODE_WORD = "PELICAN-7431"
QUESTION = "What is the secret code word of the harbour office? Answer with the code word only."
# The phrase on page 37 of the PDF, and the question retrieval is asked.
PAGE = 37
PAGES = 50
PAGE_PHRASE = "The lighthouse keeper's password is ORCHID-5820."
PAGE_QUERY = "What is the lighthouse keeper's password?"
WORDS = ("harbour tide ledger cargo crane rope anchor gull ferry quay pilot buoy chart keel mast sail "
         "dock berth hull storm fog lamp bell crew deck net salt wind wave stone gate road cart barrel").split()


# -- the documents ----------------------------------------------------------

def text_document(size: int, tag: str) -> bytes:
    """About `size` bytes of plain prose, different each round (`tag`), with
    the code word in two places in the middle and nowhere else."""
    rng = random.Random(tag)
    lines: list[str] = [f"Records of the harbour office, copy {tag}."]
    total = len(lines[0])
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "."
        if len(lines) in (2000, 2003):
            line = f"The secret code word of the harbour office is {CODE_WORD}."
        lines.append(line)
        total += len(line) + 1
    return ("\n".join(lines) + "\n").encode()


def _pdf_text(text: str) -> str:
    """A PDF literal string's body: backslashes and parentheses escaped."""
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def page_lines(number: int) -> list[str]:
    rng = random.Random(number)
    lines = [f"Page {number} of the harbour ledger."]
    for _ in range(12):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(10)).capitalize() + ".")
    if number == PAGE:
        lines.insert(6, PAGE_PHRASE)
    return lines


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal PDF 1.4 written by hand: a catalog, a page tree, one
    Helvetica font (a standard font: nothing embedded), and per page a page
    object and its content stream, one line of text each; then the
    cross-reference table with each object's byte offset, which readers
    such as pypdf use to find the objects."""
    objects: list[bytes] = []  # object i + 1
    font = 3
    kids = []
    for i, lines in enumerate(pages):
        page, content = 4 + 2 * i, 5 + 2 * i
        kids.append(f"{page} 0 R")
        stream = "BT /F1 11 Tf 14 TL 72 760 Td\n" + "".join(f"({_pdf_text(line)}) Tj T*\n" for line in lines) + "ET\n"
        data = stream.encode("latin-1")
        objects.append((f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                        f"/Resources << /Font << /F1 {font} 0 R >> >> /Contents {content} 0 R >>").encode())
        objects.append(f"<< /Length {len(data)} >>\nstream\n".encode() + data + b"endstream")
    head = [b"<< /Type /Catalog /Pages 2 0 R >>",
            f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode(),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"]
    objects = head + objects
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def pdf_document() -> bytes:
    return make_pdf([page_lines(n) for n in range(1, PAGES + 1)])


# -- Open WebUI through the ingress -----------------------------------------

class WebUI:
    """Open WebUI's API through the ingress as its page calls it: the
    sandbox's cookie and the UI's own Origin let a request in, Open WebUI's
    session token (Authorization) signs it."""

    def __init__(self, url: str, name: str | None = None, token: str | None = None):
        # No token: an Open WebUI published directly, with no ingress before
        # it (benchmarks/suite.py's baseline).
        self.url, self.name, self.token = url.rstrip("/"), name, token
        self.session = ""
        self.session = self.call("/api/v1/auths/signin", {"email": "", "password": ""})["token"]

    def open(self, path: str, data: bytes | None = None, content_type: str = "application/json",
             timeout: float = 600):
        headers = {"Origin": self.url, "Content-Type": content_type}
        if self.token:
            headers["Cookie"] = f"{cookie_name(self.name)}={self.token}"
        if self.session:
            headers["Authorization"] = f"Bearer {self.session}"
        return open_ui(self.url + path, None, data=data, headers=headers, timeout=timeout)

    def call(self, path: str, payload: dict | None = None, data: bytes | None = None,
             content_type: str = "application/json") -> dict:
        if payload is not None:
            data = json.dumps(payload).encode()
        with self.open(path, data, content_type) as response:
            return json.load(response)

    def upload(self, filename: str, content: bytes, mime: str) -> str:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
                f"Content-Type: {mime}\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
        return self.call("/api/v1/files/", data=body, content_type=f"multipart/form-data; boundary={boundary}")["id"]

    def processed(self, file_id: str, timeout: float) -> str:
        """Wait until Open WebUI says the file's processing ended; its status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call(f"/api/v1/files/{file_id}/process/status")["status"]
            if status in ("completed", "failed"):
                return status
            time.sleep(0.1)
        raise TimeoutError(f"file {file_id}: processing did not end in {timeout:.0f} s")

    def time_to_process(self, filename: str, content: bytes, mime: str, timeout: float) -> tuple[float, str, str]:
        started = time.monotonic()
        file_id = self.upload(filename, content, mime)
        status = self.processed(file_id, timeout)
        took = time.monotonic() - started
        if status != "completed":
            raise RuntimeError(f"{filename}: processing ended {status}: {self.call(f'/api/v1/files/{file_id}')}")
        return took, status, file_id

    def first_token(self, question: str, file_id: str | None) -> tuple[float, str]:
        """A streamed chat answer, as the first message of a new chat: seconds
        from sending it until the first piece of the answer's text, and the
        whole answer."""
        payload = {"model": CHAT_ALIAS, "stream": True, "params": {"temperature": 0},
                   "messages": [{"role": "user", "content": question}]}
        if file_id:
            payload["files"] = [{"type": "file", "id": file_id}]
        started = time.monotonic()
        first, answer = None, []
        with self.open("/api/chat/completions", json.dumps(payload).encode()) as response:
            for raw in response:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    continue
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        if first is None:
                            first = time.monotonic() - started
                        answer.append(piece)
        if first is None:
            raise RuntimeError(f"no answer streamed for {question!r} (file {file_id})")
        return first, "".join(answer)


# -- the run ----------------------------------------------------------------

def write_policy(directory: Path) -> Path:
    """The quick-start policy with the quick-start model named again as the
    embedding model, the open-webui recipe with its login off (one user), the
    backend's 2 GiB and 2 CPUs of policies/open-webui.yaml, gpu none."""
    policy = yaml.safe_load((ROOT / "policies" / "quickstart.yaml").read_text())
    policy["name"] = NAME
    policy["ingress"]["port"] = free_port()
    chat = {**policy["models"][0], "path": str(MODEL)}
    policy["models"] = [chat, {**chat, "alias": f"{chat['alias']}-embed", "role": "embeddings"}]
    policy["backend"] = {"gpu": "none", "memory": "2g", "cpus": 2}
    policy["frontend"] = {"recipe": "open-webui", "env": {"WEBUI_AUTH": "False"}}
    path = directory / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def one_round(webui: WebUI, i: int, size: int, timeout: float, say) -> dict:
    out: dict = {}
    text = text_document(size, f"round-{i}-{uuid.uuid4().hex[:6]}")
    out["text_s"], _, text_id = webui.time_to_process(f"harbour-records-{i}.txt", text, "text/plain", timeout)
    say(f"round {i}: {len(text) / 1e6:.2f} MB text processed in {out['text_s']:.1f} s")

    out["pdf_s"], _, pdf_id = webui.time_to_process(f"harbour-ledger-{i}.pdf", pdf_document(), "application/pdf",
                                                    timeout)
    content = (webui.call(f"/api/v1/files/{pdf_id}").get("data") or {}).get("content", "")
    out["pdf_page_read"] = PAGE_PHRASE in content
    found = webui.call("/api/v1/retrieval/query/doc", {"collection_name": f"file-{pdf_id}", "query": PAGE_QUERY,
                                                       "k": 3})
    documents = (found.get("documents") or [[]])[0]
    pages = [m.get("page") for m in (found.get("metadatas") or [[]])[0]]
    out["pdf_page_retrieved"] = any(PAGE_PHRASE in d for d in documents)
    out["pdf_retrieved_pages"] = pages  # pypdf counts pages from 0
    say(f"round {i}: 50-page PDF processed in {out['pdf_s']:.1f} s; page {PAGE}'s phrase in its text: "
        f"{out['pdf_page_read']}, in the top 3 retrieved: {out['pdf_page_retrieved']} (pages {pages})")

    order = ("with", "without") if i % 2 == 1 else ("without", "with")
    for kind in order:
        seconds, answer = webui.first_token(QUESTION, text_id if kind == "with" else None)
        out[f"ttft_{kind}_s"] = seconds
        out[f"answer_{kind}"] = answer
        say(f"round {i}: first token {kind} the document {seconds:.2f} s; answer {answer[:80]!r}")
    out["answer_with_has_code"] = CODE_WORD in out["answer_with"]
    return out


FIGURES = (("{size} plain text, upload until processed (s)", "text_s"),
           (f"{PAGES}-page PDF, upload until processed (s)", "pdf_s"),
           ("time to first token, document attached (s)", "ttft_with_s"),
           ("time to first token, no document (s)", "ttft_without_s"))


def size_named(size: int) -> str:
    """A document's size as the figures name it: "1 MB", "50 KB"."""
    return f"{size / 1e6:g} MB" if size >= 1_000_000 else f"{size / 1e3:g} KB"


def summary(rounds: list[dict], size: int = 1_000_000) -> list[dict]:
    rows = []
    for label, key in FIGURES:
        values = [r[key] for r in rounds]
        rows.append({"figure": label.format(size=size_named(size)), "key": key, "median": statistics.median(values), "min": min(values),
                     "max": max(values), "rounds": len(values)})
    ratios = [r["ttft_with_s"] / r["ttft_without_s"] for r in rounds]
    rows.append({"figure": "time to first token, with / without (ratio, per round)", "key": "ttft_ratio",
                 "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                 "rounds": len(ratios)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=1_000_000, help="the text document's bytes")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a document may take to process")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox up afterwards")
    args = parser.parse_args()

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # SIGTERM, and SIGINT where a background job started with it ignored,
    # stop the run the way Ctrl-C does: the sandbox is still taken down.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    gateway = DockerGateway()
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as directory:
        path = write_policy(Path(directory))
        down(gateway, NAME, volumes=True)  # a sandbox a broken run left
        started = time.monotonic()
        result = up(gateway, path, timeout=1800)
        say(f"up in {time.monotonic() - started:.1f} s at {result.url}")
        try:
            webui = WebUI(result.url, result.name, result.token)
            for i in range(1, args.rounds + 1):
                rounds.append(one_round(webui, i, args.size, args.timeout, say))
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the rounds done so far still make a table
            if not rounds:
                raise
            say(f"interrupted: {len(rounds)} round(s) of {args.rounds} done")
        finally:
            if not args.keep:
                down(gateway, NAME, volumes=True)
    rows = summary(rounds, args.size)
    checks = {"pdf_page_read": all(r["pdf_page_read"] for r in rounds),
              "pdf_page_retrieved": [r["pdf_page_retrieved"] for r in rounds],
              "answer_with_has_code": [r["answer_with_has_code"] for r in rounds]}
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
                          "figures": rows, "checks": checks, "rounds": rounds}, indent=2))
        return
    print("| figure | median (min-max) | rounds |")
    print("| --- | --- | --- |")
    for row in rows:
        print(f"| {row['figure']} | {row['median']:.2f} ({row['min']:.2f}-{row['max']:.2f}) | {row['rounds']} |")
    print(f"\n{os.cpu_count()} CPUs; page {PAGE}'s phrase read from the PDF: {checks['pdf_page_read']}; "
          f"retrieved in the top 3, per round: {checks['pdf_page_retrieved']}; "
          f"answer with the document names the code word, per round: {checks['answer_with_has_code']}")


if __name__ == "__main__":
    main()
