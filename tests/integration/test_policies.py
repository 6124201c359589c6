"""Every vetted policy under policies/ validates on this machine."""
from pathlib import Path

import pytest

from launcher.policy import check_policy_file

POLICIES = sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.yaml"))


@pytest.mark.parametrize("policy", POLICIES, ids=[p.name for p in POLICIES])
def test_vetted_policy_validates(policy, quickstart_model):
    _, problems = check_policy_file(policy, check_port=False)
    assert [str(p) for p in problems] == []
