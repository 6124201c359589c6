"""Policies: load a YAML file, check it against the schema and the machine,
and turn it into a frozen Policy. `load_policy` is the one entry point."""
from launcher.policy.model import Backend, Frontend, Model, Policy
from launcher.policy.validate import check_policy_file, load_policy

__all__ = ["Backend", "Frontend", "Model", "Policy", "check_policy_file", "load_policy"]
