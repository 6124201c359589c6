"""A front-end's build context: what is hashed into the image's tag is what is
sent to the engine, `.dockerignore` decides for both, and symlinks count as
links, never as what they point at."""
import hashlib
import io
import os

import pytest

from launcher.build_context import context_digest, context_files, context_problems
from launcher.engine.context import write_context
from launcher.errors import BuildFailure
from launcher.images import _hashed


def digest(context) -> str:
    d = hashlib.sha256()
    context_digest(context, "Dockerfile", d)
    return d.hexdigest()


def test_dockerignore_decides_what_is_hashed_and_sent(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / ".dockerignore").write_text("secrets\n*.log\n")
    (tmp_path / "app.py").write_text("print(1)\n")
    (tmp_path / "secrets").write_text("token\n")
    (tmp_path / "debug.log").write_text("x\n")
    files = context_files(tmp_path)
    assert "app.py" in files and "Dockerfile" in files
    assert "secrets" not in files and "debug.log" not in files
    before = digest(tmp_path)
    (tmp_path / "secrets").write_text("another token\n")
    assert digest(tmp_path) == before  # not sent, so not part of the image
    (tmp_path / "app.py").write_text("print(2)\n")
    assert digest(tmp_path) != before


def test_symlinks_inside_are_hashed_as_links_and_those_leading_out_are_problems(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    os.symlink("Dockerfile", tmp_path / "inside")
    assert context_problems(tmp_path) == []
    before = digest(tmp_path)
    os.symlink("/dev/zero", tmp_path / "zero")  # never read: hashing it would never end
    os.symlink("missing", tmp_path / "gone")
    assert context_problems(tmp_path) == ["gone is a symlink to missing, which does not exist",
                                          "zero is a symlink to /dev/zero, outside the build context"]
    assert digest(tmp_path) != before


def test_a_fifo_is_a_problem_not_a_hang(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    os.mkfifo(tmp_path / "pipe")
    assert context_problems(tmp_path) == ["pipe is not a regular file"]


def test_bytecode_caches_are_never_part_of_a_context(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "app.py").write_text("print(1)\n")
    before = digest(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\x00bytecode")
    assert context_files(tmp_path) == ["Dockerfile", "app.py"]
    assert digest(tmp_path) == before


def test_a_hard_link_is_a_problem_wherever_its_other_name_is(tmp_path):
    context = tmp_path / "ui"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\nCOPY . /ui\n")
    (context / "app.py").write_text("print(1)\n")
    assert context_problems(context) == []  # control: plain files are fine
    secret = tmp_path / "secret"  # stands for /etc/shadow or another user's file
    secret.write_text("root:$6$...\n")
    os.link(secret, context / "shadow")
    assert context_problems(context) == [
        "shadow is a hard link: the same file has 2 names, which may be outside the build context; "
        "put a copy in instead"]


def test_the_context_sent_is_the_context_checked(tmp_path):
    """A build reads its context again, minutes after the tag (and the lock)
    were worked out from it: a file changed in between is refused, not built."""
    (tmp_path / "Dockerfile").write_text("FROM debian:bookworm-slim\nCOPY app.py /\n")
    (tmp_path / "app.py").write_text("print('reviewed')\n")
    (tmp_path / "link").symlink_to("app.py")
    image = _hashed("sandbox-t-frontend", tmp_path, "Dockerfile", None)
    dockerfile = (tmp_path / "Dockerfile").read_bytes()
    write_context(image, io.BytesIO(), dockerfile)  # control: unchanged, sent
    (tmp_path / "app.py").write_text("print('swapped')\n")
    with pytest.raises(BuildFailure, match="a file of its build context changed after it was checked"):
        write_context(image, io.BytesIO(), dockerfile)


def test_a_dockerfile_that_is_a_link_is_refused(tmp_path):
    """Tried as an attacker would: the Dockerfile a link to another file of the
    context, swapped for a moment between the reads. The tag hashed the link
    and the target; the build sent the bytes of a third read, which matched
    neither check, and a signed policy started an unlocked Dockerfile."""
    (tmp_path / "real.df").write_text("FROM debian:bookworm-slim\n")
    (tmp_path / "Dockerfile").symlink_to("real.df")
    assert any("Dockerfile is not a plain file" in p for p in context_problems(tmp_path))
    image = _hashed("sandbox-t-frontend", tmp_path, "Dockerfile", None)
    with pytest.raises(BuildFailure, match="is not a plain file"):
        write_context(image, io.BytesIO(), b"FROM debian:bookworm-slim\nRUN echo unlocked\n")
    # Control: the same Dockerfile as a plain file is sent, and only the checked bytes are.
    (tmp_path / "Dockerfile").unlink()
    (tmp_path / "Dockerfile").write_text("FROM debian:bookworm-slim\n")
    assert context_problems(tmp_path) == []
    image = _hashed("sandbox-t-frontend", tmp_path, "Dockerfile", None)
    write_context(image, io.BytesIO(), b"FROM debian:bookworm-slim\n")
    with pytest.raises(BuildFailure, match="changed after it was checked"):
        write_context(image, io.BytesIO(), b"FROM debian:bookworm-slim\nRUN echo unlocked\n")
