"""What a UI writes to its log or looks up reaches the user's terminal only
escaped."""
from launcher.text import printable


def test_control_characters_and_escape_sequences_are_escaped():
    assert printable("evil\x1b]0;pwned\x07.example") == "evil\\x1b]0;pwned\\x07.example"
    assert printable("a\rb\tc\x00\x7f\x9b") == "a\\x0db\\x09c\\x00\\x7f\\x9b"
    assert printable("one\ntwo") == "one\\x0atwo"
    assert printable("one\ntwo\x1b[2J", keep_newlines=True) == "one\ntwo\\x1b[2J"


def test_bidirectional_overrides_are_escaped_and_ordinary_text_kept():
    assert printable("admin\u202etxt.exe") == "admin\\u202etxt.exe"
    assert printable("café 日本 example.com:443") == "café 日本 example.com:443"


def test_json_records_keep_the_objects_that_carry_the_key():
    from launcher.text import json_records
    lines = ['{"name": "a.example", "time": 1}', "ingress: listening", '{"event": "listening"}', '"name"',
             '{"name": "b.example"}', "{broken"]
    assert [r["name"] for r in json_records(lines, "name")] == ["a.example", "b.example"]


def test_arabic_letter_mark_and_lone_surrogates_are_escaped():
    # A lone surrogate (json.loads makes one of "\ud800") cannot even be written to a UTF-8 terminal.
    assert printable("a\u061cb\ud800c") == "a\\u061cb\\ud800c"


def test_json_text_escapes_what_a_terminal_obeys_and_keeps_every_value():
    import json

    from launcher.text import json_text
    data = {"body": "\x1b]52;c;cHduZWQ=\x07 \x1b[2J \x9b31m \x7f \u202etxt.exe \u2066x\u2069 \ud800",
            "name": "café 日本", "count": [1, 2]}
    text = json_text(data)
    assert json.loads(text) == data  # programs read exactly what was sent
    assert not [c for c in text if c in "\x1b\x07\x7f\x9b\u202e\u2066\u2069\ud800"]
    assert "\\u001b]52;c;cHduZWQ=\\u0007 \\u001b[2J \\u009b31m \\u007f \\u202etxt.exe \\u2066x\\u2069 \\ud800" in text
    assert '"name": "café 日本"' in text and text.startswith("{\n  ")
    assert "\n" not in json_text(data, indent=None)
