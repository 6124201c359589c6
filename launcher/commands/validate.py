"""`sandbox validate`: each policy file's problems, which fail it, and its
warnings, which do not (the model may run, but not as written)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from launcher.errors import Problem, SandboxError
from launcher.policy.files import HashProgress


@dataclass(frozen=True)
class Checked:
    file: Path
    name: str | None  # the sandbox's, when the policy is good
    problems: list[Problem]
    warnings: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"file": str(self.file), "ok": self.ok, "name": self.name,
                "problems": [p.to_dict() for p in self.problems], "warnings": [w.to_dict() for w in self.warnings]}


def validate(files: list[Path], connect: Callable, *, check_port: bool = True, check_model_files: bool = True,
             strict: bool = False, allowed_signers: Path | None = None,
             hash_progress: HashProgress | None = None) -> Iterator[Checked]:
    """Each file checked, in turn. `connect` makes the gateway, asked only
    which sandbox holds a busy port."""
    from launcher.commands.lock import strict_problems
    from launcher.commands.model import policy_warnings
    from launcher.policy import check_policy_file
    from launcher.signing import allowed_signers_setting
    holder = _port_holder_if_engine(connect)
    trusted = allowed_signers_setting(allowed_signers) if strict else None
    for file in files:
        policy, problems = check_policy_file(file, check_port=check_port, port_holder=holder,
                                             hash_progress=hash_progress, check_model_files=check_model_files)
        if strict and not problems:
            problems = strict_problems(file, trusted)
        warnings = policy_warnings(policy, policy.backend.gpu not in ("none", "auto"), display=str(file)) \
            if policy and check_model_files else []
        yield Checked(file, policy.name if policy else None, problems, warnings)


def _port_holder_if_engine(connect: Callable):
    """A busy port is fine when the sandbox's own ingress holds it, and worth
    naming when another sandbox's does; that needs the engine, which
    `validate` does not otherwise require."""
    def holder(name: str, port: int) -> str | None:
        try:
            from launcher.commands.prepare import port_holder
            return port_holder(connect())(name, port)
        except SandboxError:
            return None
    return holder
