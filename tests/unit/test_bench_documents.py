"""benchmarks/documents.py's hand-written PDF, offline: a reader finds every
object where the cross-reference table says, 50 pages, and page 37's phrase
on page 37 alone. Where pypdf is installed (Open WebUI reads PDFs with it) it
reads the file too, strictly; without it the structure checks still run."""
import importlib.util
import io
import re

from benchmarks import documents


def objects(pdf: bytes) -> dict[int, bytes]:
    """Each object's body, found through the xref table's byte offsets."""
    start = int(re.search(rb"startxref\n(\d+)\n%%EOF\n$", pdf).group(1))
    assert pdf[start:].startswith(b"xref\n0 ")
    count = int(re.match(rb"xref\n0 (\d+)\n", pdf[start:]).group(1))
    rows = pdf[start:].split(b"\n")[2:2 + count]
    assert rows[0] == b"0000000000 65535 f " and all(len(row) == 19 for row in rows)
    found = {}
    for number, row in enumerate(rows[1:], start=1):
        offset = int(row[:10])
        head = f"{number} 0 obj\n".encode()
        assert pdf[offset:offset + len(head)] == head, number
        found[number] = pdf[offset + len(head):pdf.index(b"\nendobj\n", offset)]
    assert re.search(rb"trailer\n<< /Size %d /Root 1 0 R >>" % count, pdf)
    return found


def test_the_pdf_has_its_pages_where_its_xref_says_and_page_37_holds_the_phrase():
    pdf = documents.pdf_document()
    assert pdf.startswith(b"%PDF-1.4\n")
    found = objects(pdf)
    assert b"/Type /Catalog /Pages 2 0 R" in found[1]
    kids = re.findall(rb"(\d+) 0 R", re.search(rb"/Kids \[([^]]*)\]", found[2]).group(1))
    assert len(kids) == documents.PAGES and b"/Count 50" in found[2]
    texts = []
    for kid in kids:
        page = found[int(kid)]
        assert b"/Type /Page " in page and b"/Parent 2 0 R" in page
        content = found[int(re.search(rb"/Contents (\d+) 0 R", page).group(1))]
        length = int(re.match(rb"<< /Length (\d+) >>\nstream\n", content).group(1))
        body = content.split(b"stream\n", 1)[1]
        assert len(body) == length + len(b"endstream") and body.endswith(b"endstream")
        texts.append(body[:length].decode("latin-1"))
    phrase = documents._pdf_text(documents.PAGE_PHRASE)
    assert [i + 1 for i, text in enumerate(texts) if phrase in text] == [documents.PAGE]


def test_pdf_strings_are_escaped():
    pdf = documents.make_pdf([["a (b) \\ c"]])
    assert b"(a \\(b\\) \\\\ c) Tj" in pdf
    objects(pdf)


def test_pypdf_reads_it_where_installed():
    if importlib.util.find_spec("pypdf") is None:
        return  # the structure test above covers it; the benchmark's own run checks Open WebUI's reading
    import pypdf
    reader = pypdf.PdfReader(io.BytesIO(documents.pdf_document()), strict=True)
    assert len(reader.pages) == documents.PAGES
    assert documents.PAGE_PHRASE in reader.pages[documents.PAGE - 1].extract_text()
    assert documents.PAGE_PHRASE not in reader.pages[documents.PAGE].extract_text()


def test_the_text_document_holds_the_code_word_and_differs_by_round():
    one, two = documents.text_document(200_000, "a"), documents.text_document(200_000, "b")
    assert len(one) >= 200_000 and one != two
    assert one.count(documents.CODE_WORD.encode()) == 2


def test_the_figures_name_the_size_of_the_text_measured():
    """A run with `--size 50000` once printed "1 MB" in its figures' names."""
    one = {"text_s": 1.0, "pdf_s": 2.0, "ttft_with_s": 3.0, "ttft_without_s": 1.5}
    assert documents.summary([one], 50_000)[0]["figure"] == "50 KB plain text, upload until processed (s)"
    assert documents.summary([one])[0]["figure"] == "1 MB plain text, upload until processed (s)"
