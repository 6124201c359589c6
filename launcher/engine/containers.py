"""I/O with a sandbox's containers: files in and out, commands run in them,
their logs, and the probe run in a part's network namespace."""
from __future__ import annotations

import io
import tarfile
import time
from typing import Iterator

from launcher.engine.calls import bounded_log, engine_call, remove_container
from launcher.errors import DockerFailure, NotFound
from launcher.spec import LABEL_PART, LABEL_SANDBOX, ContainerSpec, resource_name

PROBE_UIDS = (65533, 65532)


class Containers:
    def __init__(self, api):
        self.api = api

    def read_file(self, container: str, path: str) -> bytes | None:
        """A file from a container (running or stopped, from its volumes too),
        or None when the container or the file is not there."""
        data = None
        with engine_call(f"reading {path} from {container}", missing_ok=True):
            stream, _ = self.api.get_archive(container, path)
            data = b"".join(stream)
        if data is None:
            return None
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = next((m for m in tar if m.isfile()), None)
            return tar.extractfile(member).read() if member else None

    def write_file(self, container: str, path: str, data: bytes, uid: int = 65534) -> None:
        """Write a file into a container (running or stopped; into its volumes too)."""
        directory, _, filename = path.rpartition("/")
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            info = tarfile.TarInfo(filename)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o644, uid, uid, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        with engine_call(f"writing {path} in {container}"):
            self.api.put_archive(container, directory or "/", out.getvalue())

    def exec_in(self, container: str, command: list[str], user: str = "") -> tuple[int, str]:
        with engine_call(f"running a command in {container}"):
            exec_id = self.api.exec_create(container, command, user=user)["Id"]
            output = self.api.exec_start(exec_id)
            code = self.api.exec_inspect(exec_id)["ExitCode"]
        return code, output.decode(errors="replace")

    def logs(self, name: str, tail: int | str = 100, follow: bool = False,
             timestamps: bool = False) -> Iterator[str]:
        """A container's log lines; with `timestamps`, each begins with the
        time the engine took it (RFC 3339, nanoseconds, fixed width) and a space."""
        with engine_call(f"reading the log of {name}"):
            self.api.inspect_container(name)
            if follow:
                buffer = b""
                for chunk in self.api.logs(name, stream=True, follow=True, tail=tail):
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        yield line.decode(errors="replace")
                if buffer:
                    yield buffer.decode(errors="replace")
            else:
                yield from self.api.logs(name, tail=tail, timestamps=timestamps).decode(errors="replace").splitlines()

    def log_tail(self, name: str, lines: int = 20) -> list[str]:
        try:
            return list(self.logs(name, tail=lines))
        except (NotFound, DockerFailure):
            return []

    def run_probe(self, sandbox: str, image: str, target: ContainerSpec, request: str,
                  timeout: float = 180) -> str:
        """Run the probe in `target`'s network namespace, with `target`'s own
        restrictions, and return what it printed on its standard output.

        It runs in a PID namespace of its own and as a user that is neither
        `target`'s nor root, so that `target` can neither see it, signal it,
        nor write to its output (/proc/PID/fd/1), and its output comes back
        through the engine, which `target` cannot reach."""
        name = resource_name(sandbox, "probe")
        remove_container(self.api, name)
        with engine_call(f"running the probe in {target.name}"):
            host_config = self.api.create_host_config(
                network_mode=f"container:{target.name}",
                read_only=True, cap_drop=list(target.cap_drop), security_opt=list(target.security_opt),
                tmpfs={"/tmp": "rw,noexec,nosuid,nodev,size=8m"}, pids_limit=64, mem_limit="128m",
                log_config=bounded_log(target.log_max_size, target.log_max_files),
            )
            created = self.api.create_container(
                image=image, command=[request], name=name, user=probe_user(target.user), host_config=host_config,
                labels={LABEL_SANDBOX: sandbox, LABEL_PART: "probe"})
            try:
                self.api.start(created["Id"])
                status = self.api.wait(created["Id"], timeout=timeout)
                output = self.api.logs(created["Id"], stdout=True, stderr=False).decode(errors="replace")
                errors = self.api.logs(created["Id"], stdout=False, stderr=True).decode(errors="replace")
            finally:
                remove_container(self.api, name)
        if status.get("StatusCode") != 0:
            raise DockerFailure(f"the probe failed (exit {status.get('StatusCode')}): {(output + errors)[-2000:]}")
        return output


def probe_user(target_user: str) -> str:
    """A user for the probe that is neither the target's nor root."""
    target_uid = target_user.split(":", 1)[0]
    uid = next(u for u in PROBE_UIDS if str(u) != target_uid)
    return f"{uid}:{uid}"
