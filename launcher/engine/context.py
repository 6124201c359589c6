"""The build context as the engine gets it: a tar written from the same
files, and hashed as it is written, as the image's tag was."""
from __future__ import annotations

import hashlib
import io
import tarfile

from launcher.build_context import context_files
from launcher.errors import BuildFailure
from launcher.images import EXTRA_CA_NAME, ImageBuild


def write_context(image: ImageBuild, out, dockerfile: bytes) -> None:
    """The build context as a tar: the recipe's files (minus .dockerignore'd
    ones), its Dockerfile as `dockerfile` (the bytes that were checked),
    plus extra-ca.crt, the extra CA bundle or an empty file. The bytes
    written are hashed as they are written, as the image's tag was
    (launcher/build_context.py): a file changed since the tag was worked out,
    and the lock checked, is refused rather than built."""
    context = image.context
    digest = hashlib.sha256(f"dockerfile={image.dockerfile}\n".encode())
    with tarfile.open(fileobj=out, mode="w") as tar:
        # The same list the image's tag was hashed from (launcher/build_context.py).
        for rel in context_files(context, image.dockerfile):
            path = context / rel
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.issym() and rel != image.dockerfile:
                digest.update(f"link={rel}\n".encode() + info.linkname.encode() + b"\n")
            if rel == image.dockerfile:
                if not info.isfile():  # refused by the policy's checks (launcher/build_context.py)
                    raise BuildFailure(image.tag, f"{rel} is not a plain file", [])
                # The bytes that were checked, sent, and hashed as the tag was.
                digest.update(f"file={rel}\n".encode() + hashlib.sha256(dockerfile).digest())
                info.size = len(dockerfile)
                tar.addfile(info, io.BytesIO(dockerfile))
            elif info.isfile():
                with open(path, "rb") as f:
                    sent = _Hashing(f)
                    tar.addfile(info, sent)
                digest.update(f"file={rel}\n".encode() + sent.digest.digest())
            else:
                tar.addfile(info)
        ca = image.ca_bundle.read_bytes() if image.ca_bundle else b""
        info = tarfile.TarInfo(EXTRA_CA_NAME)
        info.size = len(ca)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(ca))
    if image.inputs and digest.hexdigest() != image.inputs:
        raise BuildFailure(image.tag, "a file of its build context changed after it was checked (and its lock "
                                      "compared); nothing was built: run the command again to check it afresh", [])


class _Hashing:
    """A file read through a sha256: what tarfile copies is what is hashed."""

    def __init__(self, source):
        self.source = source
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        return data
