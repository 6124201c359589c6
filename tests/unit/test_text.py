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
