"""Request bodies the API tests send, shared by the ingress's own tests
(tests/unit/test_api_door.py) and the live sandbox's (tests/integration/test_api.py)."""
from __future__ import annotations


def flood_body() -> bytes:
    """The attacker's body of too many values: `{"a":[{},{},...]}`, 349,000
    empty objects, 1 MiB less a little (the API's bound on a body)."""
    return b'{"a":[' + b"{}," * 348999 + b"{}]}"
