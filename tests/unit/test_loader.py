from launcher.policy.loader import dotted, parse


def test_marks_point_at_values_and_keys():
    doc, problems = parse("a: 1\nb:\n  c: [x, y]\n", "p.yaml")
    assert problems == []
    assert doc.mark(("b", "c", 1)) == (3, 10)
    assert doc.mark(("b", "c"), prefer_key=True) == (3, 3)
    assert doc.mark(("b", "missing")) == (3, 3)  # nearest parent that exists


def test_dotted_paths():
    assert dotted(("models", 0, "path")) == "models[0].path"
    assert dotted(()) == ""


def test_aliases_are_refused_before_expansion():
    doc, problems = parse("a: &x [1]\nb: *x\n", "p.yaml")
    assert doc is None
    assert str(problems[0]) == "p.yaml:1:4 YAML anchors (&name) are not allowed in a policy"


def test_non_text_keys_are_refused():
    _, problems = parse("1: a\n", "p.yaml")
    assert str(problems[0]) == "p.yaml:1:1 keys must be text; 1 is not"
    _, problems = parse("? [a]\n: b\n", "p.yaml")
    assert str(problems[0]) == "p.yaml:1:3 keys must be text"


def parsed(text: str):
    try:
        return parse(text, "p.yaml")
    except RecursionError:  # asserted outside: pytest takes minutes to show a traceback this deep
        return "RecursionError"


def test_nesting_deep_enough_to_exhaust_the_stack_is_refused_at_its_place():
    # Composing recurses a few frames per level: a thousand levels exhaust Python's stack.
    flow = "a: " + "[" * 1000 + "]" * 1000 + "\n"
    block = "".join("  " * level + "- \n" for level in range(2000))
    for text, place in ((flow, "1:35"), (block, "33:65")):
        found = parsed(text)
        assert found != "RecursionError"
        doc, problems = found
        assert doc is None
        assert [str(p) for p in problems] == [f"p.yaml:{place} is nested more than 32 levels deep; "
                                              "a policy is a few levels deep"]


def test_nesting_up_to_the_limit_is_read():
    doc, problems = parsed("a: " + "[" * 31 + "1" + "]" * 31 + "\n")
    assert problems == []
    assert doc.mark(("a",) + (0,) * 31) == (1, 35)
