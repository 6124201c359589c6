"""One small error tree. Every failure a user can act on is one of these, and
the CLI renders it at the edge: no traceback reaches a user for their mistake."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy, at a place in its file."""

    file: str
    line: int  # 1-based; 0 when the problem has no place in the file
    column: int
    field: str  # dotted path such as "backend.gpu"; "" for the whole file
    message: str

    def __str__(self) -> str:
        # A column of 0: a place known by its line only (a Dockerfile's instruction).
        where = (f"{self.file}:{self.line}:{self.column}" if self.column else f"{self.file}:{self.line}:") \
            if self.line else self.file
        return f"{where} {self.field}: {self.message}" if self.field else f"{where} {self.message}"

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "column": self.column,
                "field": self.field, "message": self.message}


class SandboxError(Exception):
    """Base of every error the CLI shows as a message instead of a traceback."""

    exit_code = 1


class PolicyError(SandboxError):
    """A policy has problems; all of them are listed, not only the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class DockerUnavailable(SandboxError):
    def __init__(self, detail: str):
        super().__init__(
            f"cannot talk to the Docker engine ({detail}). Is the Docker daemon running? "
            "Try `sandbox doctor`.")


class DockerFailure(SandboxError):
    """The engine refused or failed an operation; the message says which and why."""


class SubnetTaken(DockerFailure):
    """The subnet chosen for a sandbox's network was taken by another network
    between the plan and its creation (another sandbox started meanwhile)."""


class BuildFailure(SandboxError):
    def __init__(self, image: str, reason: str, log_tail: list[str]):
        self.reason = reason
        self.log_tail = log_tail
        tail = "\n".join("  " + line for line in log_tail)
        super().__init__(f"building image {image} failed: {reason}\nlast lines of the build:\n{tail}")


class NotReady(SandboxError):
    """A part of the sandbox did not become ready in time."""

    def __init__(self, part: str, reason: str, log_tail: list[str]):
        self.part = part
        self.log_tail = log_tail
        tail = "\n".join("  " + line for line in log_tail) or "  (no output)"
        super().__init__(f"the {part} did not become ready: {reason}\nlast lines of its log:\n{tail}")


class NotFound(SandboxError):
    pass


class ModelChanged(SandboxError):
    """A model file no longer has the sha256 it was checked with."""

    exit_code = 2


class ImageSwapped(SandboxError):
    """An image tag points to an image this launcher neither built nor finds
    pinned by the policy's lock."""

    exit_code = 2
