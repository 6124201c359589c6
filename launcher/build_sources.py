"""What the Docker engine itself fetches for an image build (docs/security.md,
"The build step"). A build's RUN steps reach the network only through the
build proxy, but the engine pulls base images (FROM, COPY --from, and those
named by a base image's ONBUILD triggers) and fetches remote ADD sources on
its own, from the host's network namespace: the proxy never sees those
requests, so `ADD http://127.0.0.1:8000/` or `FROM 10.0.0.5:5000/x` would
reach the host's and the LAN's services, unrecorded.

A Dockerfile is read here as the engine reads it, by the engine's own parser
(the `dockerfile` package wraps it), and:

- a remote ADD source (a URL, a git repository) is refused: nothing would
  record the fetch, and a name checked now may resolve elsewhere when the
  engine fetches it. A RUN step with curl goes through the proxy instead;
- an image whose registry is an IP address or localhost is refused; one
  whose registry name resolves to a non-public or host address is refused
  before it is pulled (`registry_refusal`, with the build proxy's own rules);
- variables in those places are resolved as the engine would (build
  arguments with their defaults: the launcher gives builds no others), and
  refused where they cannot be.
"""
from __future__ import annotations

import importlib.util
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Callable

import dockerfile as engine_parser

from launcher.errors import Problem
from launcher.resources import IMAGES_DIR

MAX_DOCKERFILE_BYTES = 1024 * 1024
# Build arguments the engine fills in without an ARG; the launcher gives
# builds the proxy's address in the first four, so their value is not the
# Dockerfile's to decide.
PREDEFINED_ARGS = frozenset(name for base in ("http", "https", "ftp", "no", "all")
                            for name in (f"{base}_proxy", f"{base.upper()}_PROXY"))
# The engine's escape characters: `\` unless an `# escape=` directive picks
# the backtick. Words are read with both, and refused if either reading is.
ESCAPES = ("\\", "`")
# A parser directive (`# syntax=...`) at the top of a Dockerfile.
DIRECTIVE = re.compile(r"#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*")
# Any URL, and git's scp-like user@host:path, which BuildKit's ADD clones.
REMOTE_SOURCE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|[A-Za-z0-9_.-]+@[^/\s]+:|github\.com/")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
REMOTE_WHY = ("a remote source: the Docker engine would fetch it itself, from the host's network, outside the "
              "build proxy and unrecorded. Fetch it in a RUN step (curl, wget), which goes through the proxy")
# Why an image's registry is checked at all.
PULLED_WHY = "the engine pulls images from the host's network, outside the build proxy"


@dataclass(frozen=True)
class ImageUse:
    """An image a Dockerfile names, its variables resolved."""

    line: int
    instruction: str  # FROM, COPY --from, ONBUILD COPY --from, RUN --mount=from, # syntax
    image: str
    # Whether the engine's builder (the classic one, which the launcher
    # uses) pulls it when it is missing; `# syntax` and RUN --mount are
    # BuildKit's only, and checked all the same.
    pulled: bool = True
    written: str = ""  # as the Dockerfile writes it, when that differs (FROM $BASE)

    def __str__(self) -> str:
        shown = f"{self.written} (which is {self.image})" if self.written else self.image
        return _written(self.instruction, shown)


def _written(instruction: str, value: str) -> str:
    """As the Dockerfile writes it: FROM IMAGE, COPY --from=IMAGE, # syntax=IMAGE."""
    return f"{instruction}={value}" if instruction.endswith(("from", "syntax")) else f"{instruction} {value}"


@dataclass(frozen=True)
class BaseImage:
    """What the engine holds of an image a build uses."""

    id: str
    env: tuple[str, ...] = ()  # KEY=VALUE, as its config lists them
    onbuild: tuple[str, ...] = ()  # its ONBUILD triggers, which run in a build FROM it
    pulled: bool = False  # pulled for this build, or already on this machine


@dataclass
class Examined:
    images: list[ImageUse] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def read_dockerfile(context: Path, dockerfile: str) -> tuple[bytes | None, list[Problem]]:
    """A Dockerfile's bytes, read once and no further than the size limit."""
    try:
        with open(context / dockerfile, "rb") as f:
            data = f.read(MAX_DOCKERFILE_BYTES + 1)
    except OSError as e:
        return None, [Problem(dockerfile, 0, 0, "", f"cannot be read: {e.strerror}")]
    if len(data) > MAX_DOCKERFILE_BYTES:
        return None, [Problem(dockerfile, 0, 0, "", f"is larger than {MAX_DOCKERFILE_BYTES // 1024} KiB")]
    return data, []


def dockerfile_problems(context: Path, dockerfile: str) -> list[Problem]:
    """What a policy's Dockerfile would have the engine fetch that is refused
    whatever the engine holds (for `validate` and `plan`; the build checks
    again, with the base images at hand)."""
    data, problems = read_dockerfile(context, dockerfile)
    return problems if data is None else examine(data, dockerfile).problems


def examine(data: bytes, name: str, base_image: Callable[[str], BaseImage | None] | None = None) -> Examined:
    """The images a Dockerfile's build uses and what in it is refused, with
    `name` (the Dockerfile's path in its context) and the line. Without
    `base_image` (what the engine holds of an image, once it is there) the
    base images' variables and ONBUILD triggers are unknown, and only what
    is refused whatever they are is found."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return Examined(problems=[Problem(name, data[:e.start].count(b"\n") + 1, 0, "", "is not UTF-8 text")])
    found = Examined()
    for line, image in _syntax_directives(text):
        use = ImageUse(line, "# syntax", image, pulled=False)
        found.images.append(use)
        found.problems += _image_problems(use, name)
    # Engine 20.10's parser knows no heredocs: there, the lines of a heredoc
    # are instructions of their own, where newer engines read them as the
    # heredoc's text. Both readings are checked.
    readings = [text] + ([text.replace("<<", "< <")] if "<<" in text else [])
    for reading in readings:
        try:
            commands = engine_parser.parse_string(reading)
        except engine_parser.GoParseError as e:
            found.problems.append(Problem(name, 0, 0, "", f"cannot be parsed: {e}"))
            break
        _Reading(name, base_image, found).walk(commands)
    found.images = list(dict.fromkeys(found.images))
    found.problems = sorted(set(found.problems), key=lambda p: (p.line, p.message))
    return found


def _syntax_directives(text: str) -> list[tuple[int, str]]:
    """The `# syntax=IMAGE` directives: as the engine reads directives, only
    in the lines at the very top that are each one directive."""
    out = []
    for number, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        match = DIRECTIVE.fullmatch(line)
        if not match:
            break
        if match[1].lower() == "syntax":
            out.append((number, match[2]))
    return out


class _Unknown(Exception):
    """A variable whose value the launcher cannot know."""


class _Reading:
    """One pass over the parsed instructions, keeping what the engine would
    know at each: build arguments, each stage's environment and name."""

    def __init__(self, name: str, base_image: Callable[[str], BaseImage | None] | None, found: Examined):
        self.name = name
        self.base_image = base_image
        # With the base images at hand, a variable the launcher cannot
        # resolve is refused; without, it is left for the build's check.
        self.strict = base_image is not None
        self.found = found
        self.meta: dict[str, str | None] = {}  # ARGs before the first FROM; None: unknown
        self.stages: list[tuple[str | None, dict, bool]] = []  # (name, environment, environment known)
        self.env: dict[str, str | None] = {}
        self.env_known = False  # whether the base image's environment is known
        self.args: dict[str, str | None] = {}
        self.in_stage = False
        self.origin = ""  # whose instructions these are, when not the Dockerfile's (a base image's trigger)

    def walk(self, commands) -> None:
        for command in commands:
            instruction = command.cmd.upper()
            if instruction == "FROM":
                self._from(command)
            elif instruction == "ARG":
                self._arg(command)
            elif not self.in_stage:
                continue  # the engine allows nothing else before the first FROM
            elif instruction == "ENV":
                self._env(command)
            elif instruction == "ADD":
                self._add(command, command.start_line, "ADD")
            elif instruction == "COPY":
                self._copy_from(command, command.start_line, "COPY")
            elif instruction == "RUN":
                self._mounts(command, command.start_line)
            elif instruction == "ONBUILD":
                self._triggers([re.sub(r"(?is)^\s*onbuild\s+", "", command.original)], command.start_line)
        self._end_stage()

    # ---- what the engine fetches --------------------------------------
    def _from(self, command) -> None:
        self._end_stage()
        line, words = command.start_line, command.value
        earlier = {name: (env, known) for name, env, known in self.stages if name}
        stage = words[2].lower() if len(words) >= 3 and words[1].upper() == "AS" else None
        self.stages.append((stage, {}, False))
        self.in_stage, self.args, self.env, self.env_known = True, {}, {}, False
        word = words[0] if words else ""
        image = self._word(word, self._meta_value, line, "FROM", always=True)
        if not image:
            return
        if image.lower() in earlier:
            env, self.env_known = earlier[image.lower()]
            self.env = dict(env)
            return
        if image.lower() == "scratch":
            self.env_known = True
            return
        self._use(ImageUse(line, "FROM", image, written=word if word != image else ""))
        base = self.base_image(image) if self.base_image else None
        if base:
            self.env = dict(item.partition("=")[::2] for item in base.env)
            self.env_known = True
            self._triggers(list(base.onbuild), line, f"FROM {image}: its trigger ")

    def _end_stage(self) -> None:
        if self.stages:
            name, _, _ = self.stages[-1]
            self.stages[-1] = (name, dict(self.env), self.env_known)

    def _add(self, command, line: int, label: str) -> None:
        words = command.value[:-1] if len(command.value) > 1 else command.value
        for word in words:
            for source in self._readings(word, self._stage_value, line, label):
                if REMOTE_SOURCE.match(source):
                    shown = word if source == word else f"{word} (which is {source})"
                    self._problem(line, f"{label} {shown}", REMOTE_WHY)

    def _copy_from(self, command, line: int, label: str) -> None:
        for flag in command.flags:
            if flag.lower().startswith("--from="):
                self._image_or_stage(flag[len("--from="):], line, f"{label} --from")

    def _mounts(self, command, line: int, label: str = "RUN") -> None:
        for flag in command.flags:
            if flag.lower().startswith("--mount="):
                options = dict(item.partition("=")[::2] for item in flag[len("--mount="):].split(","))
                if options.get("from"):
                    self._image_or_stage(options["from"], line, f"{label} --mount=from", pulled=False)

    def _image_or_stage(self, word: str, line: int, label: str, pulled: bool = True) -> None:
        image = self._word(word, self._stage_value, line, label)
        if not image:
            return
        names = [name for name, _, _ in self.stages[:-1] if name]
        if image.lower() in names or (image.isdigit() and int(image) < len(self.stages) - 1):
            return  # an earlier stage of this build
        self._use(ImageUse(line, label, image, pulled, written=word if word != image else ""))

    def _triggers(self, triggers: list[str], line: int, origin: str = "") -> None:
        """ONBUILD instructions run in a later build (or stage) FROM the image:
        checked as that build would run them. `origin` says whose they are
        when they are not the Dockerfile's own."""
        self.origin = origin
        for trigger in triggers:
            try:
                commands = engine_parser.parse_string(trigger)
            except engine_parser.GoParseError as e:
                self._problem(line, f"ONBUILD {trigger}", f"cannot be parsed: {e}")
                continue
            for command in commands:
                instruction = command.cmd.upper()
                if instruction == "ADD":
                    self._add(command, line, "ONBUILD ADD")
                elif instruction == "COPY":
                    self._copy_from(command, line, "ONBUILD COPY")
                elif instruction == "RUN":
                    self._mounts(command, line, "ONBUILD RUN")
        self.origin = ""

    def _use(self, use: ImageUse) -> None:
        self.found.images.append(use)
        self.found.problems += _image_problems(use, self.name, self.origin)

    # ---- variables, as the engine resolves them -----------------------
    def _arg(self, command) -> None:
        for item in command.value:
            key, has_default, default = item.partition("=")
            if not self.in_stage:
                self.meta[key] = self._resolved(default, self._meta_value) if has_default else ""
            elif has_default:
                self.args[key] = self._resolved(default, self._stage_value)
            else:
                self.args[key] = self.meta.get(key, "")

    def _env(self, command) -> None:
        pairs = list(zip(command.value[::2], command.value[1::2]))
        values = [self._resolved(value, self._stage_value) for _, value in pairs]
        for (key, _), value in zip(pairs, values):
            self.env[key] = value

    def _meta_value(self, key: str) -> str:
        if key in PREDEFINED_ARGS:
            raise _Unknown(f"${key} is given to builds by the launcher (the build proxy's address)")
        value = self.meta.get(key, "")
        if value is None:
            raise _Unknown(f"the value of ${key} cannot be known")
        return value

    def _stage_value(self, key: str) -> str:
        # As the engine resolves them: ENV (the base image's too) before ARG.
        if key in self.env:
            value = self.env[key]
        elif key in PREDEFINED_ARGS:
            raise _Unknown(f"${key} is given to builds by the launcher (the build proxy's address)")
        elif key in self.args:
            value = self.args[key]
        elif self.env_known:
            value = ""
        else:
            raise _Unknown(f"${key} is not set in the Dockerfile, and the base image may set it")
        if value is None:
            raise _Unknown(f"the value of ${key} cannot be known")
        return value

    def _resolved(self, word: str, lookup) -> str | None:
        try:
            return _expand(word, lookup, ESCAPES[0])
        except _Unknown:
            return None

    def _readings(self, word: str, lookup, line: int, label: str) -> set[str]:
        """The word under each escape character; none when a variable in it
        is unknown, which is refused only when the base images are known."""
        try:
            return {_expand(word, lookup, escape) for escape in ESCAPES}
        except _Unknown as e:
            if self.strict:
                self._problem(line, f"{label} {word}", f"{e}; the launcher must know what the engine would "
                                                       f"fetch: write the value out")
            return set()

    def _word(self, word: str, lookup, line: int, label: str, always: bool = False) -> str | None:
        """An image's name as the engine reads it; None (and a problem) when
        it cannot be known, or reads differently with the other escape."""
        try:
            readings = {_expand(word, lookup, escape) for escape in ESCAPES}
        except _Unknown as e:
            if always or self.strict:
                self._problem(line, _written(label, word), f"{e}; the launcher must know which image the "
                                                            f"engine would pull: write its name out")
            return None
        if len(readings) > 1:
            self._problem(line, _written(label, word), "an image's name with an escape character in it; "
                                                        "write it plainly")
            return None
        return readings.pop()

    def _problem(self, line: int, what: str, why: str) -> None:
        self.found.problems.append(Problem(self.name, line, 0, "", f"{self.origin}{what}: {why}"))


def _expand(word: str, lookup: Callable[[str], str], escape: str) -> str:
    """A word as the engine's shell lexer reads it: quotes removed, escapes
    applied, $NAME, ${NAME}, ${NAME:-word} and ${NAME:+word} replaced.
    Raises _Unknown for an unknown variable, or another form of one."""
    out, i = [], 0
    while i < len(word):
        ch = word[i]
        if ch == escape:
            out.append(word[i + 1:i + 2])
            i += 2
        elif ch == "'":
            end = word.find("'", i + 1)
            if end < 0:
                raise _Unknown(f"an unterminated quote in {word}")
            out.append(word[i + 1:end])
            i = end + 1
        elif ch == '"':
            i += 1
            while i < len(word) and word[i] != '"':
                if word[i] == escape and word[i + 1:i + 2] in ('"', "$", escape):
                    out.append(word[i + 1])
                    i += 2
                elif word[i] == "$":
                    value, i = _dollar(word, i, lookup, escape)
                    out.append(value)
                else:
                    out.append(word[i])
                    i += 1
            if i >= len(word):
                raise _Unknown(f"an unterminated quote in {word}")
            i += 1
        elif ch == "$":
            value, i = _dollar(word, i, lookup, escape)
            out.append(value)
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _dollar(word: str, i: int, lookup: Callable[[str], str], escape: str) -> tuple[str, int]:
    """The value of the variable at word[i] ('$'), and where the word goes on."""
    if word[i + 1:i + 2] != "{":
        match = NAME.match(word, i + 1)
        if not match:
            if word[i + 1:i + 2].isdigit() or word[i + 1:i + 2] in tuple("@*#?-$!"):
                raise _Unknown(f"${word[i + 1]} is a form of variable the launcher does not resolve")
            return "$", i + 1  # a lone $ is itself
        return lookup(match[0]), match.end()
    match = NAME.match(word, i + 2)
    if not match:
        raise _Unknown(f"{word[i:]} is a form of variable the launcher does not resolve")
    key, j = match[0], match.end()
    if word[j:j + 1] == "}":
        return lookup(key), j + 1
    operator = word[j:j + 2]
    end = _closing_brace(word, j + 2)
    if operator not in (":-", ":+") or end < 0:
        raise _Unknown(f"{word[i:]} is a form of variable the launcher does not resolve")
    value = lookup(key)
    inner = word[j + 2:end]
    if operator == ":-":
        return (value if value else _expand(inner, lookup, escape)), end + 1
    return (_expand(inner, lookup, escape) if value else ""), end + 1


def _closing_brace(word: str, start: int) -> int:
    depth = 0
    for k in range(start, len(word)):
        if word.startswith("${", k):
            depth += 1
        elif word[k] == "}":
            if depth == 0:
                return k
            depth -= 1
    return -1


# ---- registries --------------------------------------------------------

def registry_of(image: str) -> str | None:
    """The host of the registry an image reference names (as the engine
    reads it: a first part with a dot, a colon or `localhost`, or a capital
    letter), or None for Docker Hub."""
    first, slash, _ = image.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return None
    if first.startswith("["):
        return first[1:].partition("]")[0]
    return first.partition(":")[0]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(host)  # also 127.1, 0x7f.1 and 2130706433, as the resolver reads them
        return True
    except OSError:
        return False


def _image_problems(use: ImageUse, name: str, origin: str = "") -> list[Problem]:
    host = registry_of(use.image)
    if host is None:
        return []
    lowered = host.lower().rstrip(".")
    why = None
    if _is_address(lowered):
        why = f"its registry {host} is an IP address"
    elif lowered == "localhost" or lowered.endswith(".localhost"):
        why = f"its registry {host} is this machine"
    if why is None:
        return []
    return [Problem(name, use.line, 0, "", f"{origin}{use}: {why}, and {PULLED_WHY}. Name a registry by its "
                                           f"public name")]


@cache
def _build_proxy():
    """The build proxy's own module: one definition of the addresses a
    build must not reach, for the proxy and for the registries the engine
    pulls from."""
    spec = importlib.util.spec_from_file_location("sandbox_build_proxy", IMAGES_DIR / "build-proxy" / "proxy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def registry_refusal(image: str, host_addresses: tuple[str, ...], allow_networks: tuple[str, ...] = ()) -> str | None:
    """Why the engine must not pull `image` (its registry resolves to an
    address the build proxy refuses), or None. Docker Hub's registry is the
    engine's own setting, never a policy's, and is not looked up."""
    host = registry_of(image)
    if host is None:
        return None
    try:
        infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except OSError:
        return f"its registry {host} does not resolve"
    mirrors = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)
    for address in dict.fromkeys(info[4][0] for info in infos):
        why = _build_proxy().address_refusal(address, frozenset(host_addresses), mirrors)
        if why:
            return f"its registry {host} resolves to {address}, {why}, and {PULLED_WHY}"
    return None
