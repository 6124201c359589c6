"""`sandbox validate`: each policy file's problems, which fail it, and its
warnings, which do not (the model may run, but not as written)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from launcher.errors import PolicyError, Problem, SandboxError
from launcher.lockfile import LockError
from launcher.policy import loader
from launcher.policy.files import HashProgress
from launcher.policy.loader import Document
from launcher.policy.model import Policy
from launcher.policy.source import read_source
from launcher.signing import SignatureError


@dataclass(frozen=True)
class Checked:
    file: Path
    name: str | None  # the sandbox's, when the policy is good
    problems: list[Problem]
    warnings: list[Problem]
    api_only: bool = False  # `frontend: none`: no UI, the API at /v1/ only

    @property
    def summary(self) -> str:
        """What `validate` says of a good policy."""
        if not self.api_only:
            return f"{self.file}: ok (sandbox {self.name})"
        return (f"{self.file}: ok (sandbox {self.name}, API only: frontend is none, so no front-end runs and its "
                f"front door serves only the OpenAI-compatible API at /v1/; `sandbox env {self.name}` prints "
                f"its address and token)")

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"file": str(self.file), "ok": self.ok, "name": self.name, "api_only": self.api_only,
                "problems": [p.to_dict() for p in self.problems], "warnings": [w.to_dict() for w in self.warnings]}


def validate(files: list[Path], connect: Callable, *, check_port: bool = True, check_model_files: bool = True,
             strict: bool = False, allowed_signers: Path | None = None,
             hash_progress: HashProgress | None = None) -> Iterator[Checked]:
    """Each file checked, in turn. `connect` makes the gateway, asked only
    which sandbox holds a busy port."""
    from launcher.commands.model import policy_warnings
    from launcher.policy.validate import embedding_warnings
    from launcher.signing import allowed_signers_setting
    holder = _port_holder_if_engine(connect)
    trusted = allowed_signers_setting(allowed_signers) if strict else None
    for file in files:
        policy, problems, doc = _checked(file, strict, trusted, check_port=check_port, port_holder=holder,
                                         hash_progress=hash_progress, check_model_files=check_model_files)
        warnings = policy_warnings(policy, policy.backend.gpu not in ("none", "auto"), display=str(file),
                                   doc=doc) if policy and check_model_files else []
        warnings += embedding_warnings(policy, doc, display=str(file)) if policy else []
        yield Checked(file, policy.name if policy else None, problems, warnings,
                      api_only=bool(policy and policy.api_only))


def _checked(file: Path, strict: bool, trusted: Path | None,
             **options) -> tuple[Policy | None, list[Problem], Document | None]:
    """The policy's problems, then, with `strict`, its lock's and signature's,
    and the document parsed (where warnings point): the policy is read and
    parsed once (with its lock and signature), and those bytes are checked."""
    from launcher.commands.lock import strict_problems
    from launcher.policy import check_policy_file
    source = None
    if strict:
        try:
            source = read_source(file)
        except PolicyError as e:
            return None, e.problems, None
        except (LockError, SignatureError) as e:
            return None, [Problem(str(file), 0, 0, "", f"--strict needs a lock: {e}")], None
        document = source.document
    else:
        document = loader.load(Path(file), display_name=str(file))
    policy, problems = check_policy_file(file, document=document, **options)
    if source and not problems:
        problems = strict_problems(source, trusted)
    return policy, problems, document[0]


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
