"""Check a policy document against schemas/policy.schema.json and word each
failure for a person, at the line and column of the value (or key) concerned."""
from __future__ import annotations

import json
from functools import lru_cache

from jsonschema import Draft202012Validator

from launcher.errors import Problem
from launcher.policy.loader import Document
from launcher.resources import SCHEMA_PATH

_TYPE_NAMES = {"string": "text", "integer": "a whole number", "number": "a number",
               "boolean": "true or false", "object": "a mapping (key: value)",
               "array": "a list", "null": "empty"}


@lru_cache(maxsize=1)
def schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return json.load(f)


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    Draft202012Validator.check_schema(schema())
    return Draft202012Validator(schema())


def schema_problems(doc: Document) -> list[Problem]:
    problems: list[Problem] = []
    for error in _validator().iter_errors(doc.data):
        problems.extend(_explain(error, doc))
    unique = {(p.line, p.column, p.field, p.message): p for p in problems}
    return sorted(unique.values(), key=lambda p: (p.line, p.column, p.field))


def _explain(error, doc: Document) -> list[Problem]:
    path = tuple(error.absolute_path)
    s = error.schema if isinstance(error.schema, dict) else {}
    v = error.validator
    value = error.instance
    if v == "additionalProperties" and isinstance(value, dict):
        known = set(s.get("properties", {}))
        extra = sorted(k for k in value if k not in known)
        hint = f"; known fields here: {', '.join(sorted(known))}" if known else ""
        return [doc.problem(path + (k,), f"unknown field{hint}", prefer_key=True) for k in extra]
    if v == "required" and isinstance(value, dict):
        return [doc.problem(path, f"missing required field '{name}'{_REQUIRED_HINTS.get(path + (name,), '')}")
                for name in error.validator_value if name not in value]
    if "propertyNames" in error.relative_schema_path:
        return [doc.problem(path, f"{value!r} {s.get('x-message', 'is not an allowed name')}")]
    if "x-message" in s and v not in ("type",):
        return [doc.problem(path, s["x-message"])]
    if v == "anyOf" and "x-message" in s:
        return [doc.problem(path, s["x-message"])]
    if v == "type":
        wanted = error.validator_value
        wanted = [wanted] if isinstance(wanted, str) else wanted
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in wanted)
        hint = "; put it in quotes" if "string" in wanted and not isinstance(value, (dict, list)) else ""
        return [doc.problem(path, f"must be {names}, not {_describe(value)}{hint}")]
    if v == "enum":
        return [doc.problem(path, "must be one of " + ", ".join(map(str, error.validator_value)))]
    if v == "const":
        return [doc.problem(path, f"must be {error.validator_value!r}")]
    if v == "minimum":
        return [doc.problem(path, f"must be at least {error.validator_value}")]
    if v == "maximum":
        return [doc.problem(path, f"must be at most {error.validator_value}")]
    if v == "exclusiveMinimum":
        return [doc.problem(path, f"must be more than {error.validator_value}")]
    if v == "minItems":
        return [doc.problem(path, f"must list at least {error.validator_value}")]
    if v == "maxItems":
        return [doc.problem(path, f"may list at most {error.validator_value}")]
    if v == "uniqueItems":
        return [doc.problem(path, "must not repeat an entry")]
    if v == "minLength":
        return [doc.problem(path, "must not be empty")]
    if v == "maxLength":
        return [doc.problem(path, f"is longer than {error.validator_value} characters")]
    if v == "maxProperties":
        return [doc.problem(path, f"may have at most {error.validator_value} entries")]
    if v == "pattern":
        return [doc.problem(path, f"must match {error.validator_value}")]
    return [doc.problem(path, error.message)]


# What a missing field may be, where it is not plain: a sandbox without a
# UI says so, rather than leave `frontend` out by mistake.
_REQUIRED_HINTS = {("frontend",): " (a mapping with recipe, build or image; or `frontend: none` for a sandbox that "
                                  "serves only the API)"}


def _describe(value) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if value is None:
        return "empty"
    if isinstance(value, (dict, list)):
        return _TYPE_NAMES["object" if isinstance(value, dict) else "array"]
    return repr(value)
