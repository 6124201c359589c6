"""A GGUF file's header, metadata and tensor table, read as hostile input.

A model is a file someone else made, and the launcher reads it on the host,
outside any sandbox (`model inspect`, `model pull`, `validate`, `up`). So the
reader is iterative (an array of arrays is refused, as llama.cpp refuses it:
no nesting to recurse into), checks every count and length against the bytes
left in the file before it allocates or skips anything, knows every value
type or refuses the file, decodes strings as UTF-8, and holds the tensor
table to what llama.cpp will load: unique names, known types, shapes whose
rows fill whole blocks, each tensor where the one before it ends (aligned),
and the file long enough for all of them. Only the keys the launcher uses
are kept (USED_KEYS, and an architecture's SHAPE_KEYS); every other value,
and every array (a tokenizer's tokens, merges and scores: megabytes), is
stepped over by length, never built. Key and tensor counts are capped, so
what is kept is bounded by construction, not by the file's size.

The file is read through one reader with a window of at most a few MiB over
it: the bytes checked are the bytes used, and memory stays bounded whatever
the file claims. Every refusal is a GgufError naming the file and the key,
tensor or offset."""
from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import SandboxError
from launcher.text import one_line

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # llama.cpp reads these; version 1 is long gone
DEFAULT_ALIGNMENT = 32
MAX_NAME = 63  # ggml's GGML_MAX_NAME, less the terminating NUL
MAX_DIMS = 4
INT64_MAX = 2**63 - 1
# The longest string read into memory (a key, a name, a chat template); longer
# ones are refused rather than read. Chat templates run to tens of KiB.
MAX_STRING = 16 * 2**20
# Integer arrays up to this many elements are read (per-layer head counts);
# longer ones (token types) are stepped over.
MAX_SMALL_ARRAY = 4096
_CHUNK = 2**20
# Real models hold tens of keys, and up to about 1,100 tensors (a
# mixture-of-experts model with 256 experts, as DeepSeek-V3 or Kimi K2, keeps
# each layer's experts in one tensor); one written before llama.cpp merged
# experts holds one per expert, layer and matrix: 46,848 for 256 experts in
# 61 layers. Past these caps a file is refused: each key or tensor read costs
# memory, whatever the file's size.
MAX_KEYS = 65_536
MAX_TENSORS = 65_536
MAX_KEY = 65_535  # the GGUF specification's longest key
# An architecture's name, as llama.cpp spells them (llama, qwen3moe, command-r, gpt-oss).
ARCHITECTURE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

# The keys the launcher reads (launcher/models/facts.py); general.name and
# general.architecture are read as text, the others' strings are not read.
USED_KEYS = frozenset({"general.architecture", "general.name", "general.file_type", "general.alignment",
                       "tokenizer.ggml.tokens", "tokenizer.chat_template"})
TEXT_KEYS = frozenset({"general.architecture", "general.name"})
# The shape keys, each under the architecture's name (llama.block_count);
# those llama.cpp reads as one value or one per layer are PER_LAYER_KEYS.
SHAPE_KEYS = frozenset({"context_length", "block_count", "embedding_length", "feed_forward_length",
                        "attention.head_count", "attention.head_count_kv", "attention.key_length",
                        "attention.value_length", "vocab_size"})
PER_LAYER_KEYS = frozenset({"feed_forward_length", "attention.head_count", "attention.head_count_kv"})

# GGUF value types: (name, struct format) for those of a fixed size.
STRING, ARRAY = 8, 9
_FIXED = {0: ("uint8", "B"), 1: ("int8", "b"), 2: ("uint16", "H"), 3: ("int16", "h"), 4: ("uint32", "I"),
          5: ("int32", "i"), 6: ("float32", "f"), 7: ("bool", "?"), 10: ("uint64", "Q"), 11: ("int64", "q"),
          12: ("float64", "d")}
_FIXED_SIZE = {t: struct.calcsize("<" + fmt) for t, (_, fmt) in _FIXED.items()}
INTEGER_TYPES = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
UINT32 = 4

# ggml tensor types: (name, elements per block, bytes per block), as ggml
# defines them (a test compares them with the gguf package's table).
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}

_U32 = struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_HEADER = struct.Struct("<4sIQQ")


class GgufError(SandboxError):
    exit_code = 2


@dataclass(frozen=True)
class Array:
    """An array stepped over: its element type and length, and where its
    values start in the file."""
    type: int
    count: int
    offset: int = 0


@dataclass(frozen=True)
class Tensor:
    name: str
    type: int
    shape: tuple[int, ...]
    offset: int  # from the start of the data section
    elements: int
    bytes: int


@dataclass(frozen=True)
class GgufFile:
    version: int
    size: int
    # key -> (value type, value), for the keys the launcher uses only: a
    # scalar as Python's int, float or bool; a str for TEXT_KEYS, None for
    # another string (not read); for ARRAY, a tuple of ints (an
    # architecture's per-layer key, up to MAX_SMALL_ARRAY values) or an
    # Array (any other, stepped over).
    metadata: dict[str, tuple[int, object]]
    keys: int  # how many the file holds
    tensors: tuple[Tensor, ...]
    alignment: int
    data_offset: int


class _Window:
    """The file through a window of bytes read with pread: `need(n)` makes n
    bytes from the current offset available in `buf` at `pos`, once they are
    known to be in the file."""

    def __init__(self, fd: int, size: int, refuse):
        self.fd, self.size, self.refuse = fd, size, refuse
        self.buf, self.start, self.pos = b"", 0, 0

    @property
    def offset(self) -> int:
        return self.start + self.pos

    def left(self) -> int:
        return self.size - self.offset

    def need(self, n: int, what: str) -> None:
        if self.pos + n <= len(self.buf):
            return
        if n > self.left():
            self.refuse(f"{what} needs {n} bytes at offset {self.offset}, but the file ends {self.left()} "
                        f"bytes later", self.offset)
        kept = self.buf[self.pos:]
        self.start, self.pos = self.offset, 0
        at = self.start + len(kept)
        more = os.pread(self.fd, min(max(n, _CHUNK) - len(kept), self.size - at), at)
        self.buf = kept + more
        if len(self.buf) < n:
            self.refuse("the file got shorter while it was read", at + len(more))

    def skip(self, n: int) -> None:
        """Step over n bytes the caller checked are in the file."""
        if self.pos + n <= len(self.buf):
            self.pos += n
        else:
            self.start, self.buf, self.pos = self.offset + n, b"", 0

    def u32(self, what: str) -> int:
        self.need(4, what)
        value = _U32(self.buf, self.pos)[0]
        self.pos += 4
        return value

    def u64(self, what: str) -> int:
        self.need(8, what)
        value = _U64(self.buf, self.pos)[0]
        self.pos += 8
        return value

    def string(self, what: str, longest: int = MAX_STRING) -> str:
        at = self.offset
        length = self.u64(what)
        if length > longest:
            self.refuse(f"{what} is a string of {length} bytes, more than the {longest} this reader "
                        f"reads", at)
        self.need(length, what)
        raw = self.buf[self.pos:self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.refuse(f"{what} is not UTF-8 (byte {e.start} of the string)", at + 8 + e.start)

    def skip_strings(self, count: int, what: str) -> None:
        """Step over `count` strings, each a length and its bytes, without
        building any: the loop a tokenizer's 400,000 tokens and merges cost,
        kept to one bound check and one unpack a string."""
        u64 = _U64
        done = 0
        while done < count:
            buf, pos = self.buf, self.pos
            last = len(buf) - 8  # the last place a length can be read from
            for done in range(done, count):
                if pos > last:
                    break
                pos += 8 + u64(buf, pos)[0]
            else:
                done = count
            if pos > len(buf):
                # The string before `done` runs past the window: step over
                # the rest of it, once it is known to be in the file.
                if self.start + pos > self.size:
                    self.refuse(f"{what}[{done - 1}] runs to byte {self.start + pos}, past the end of the file "
                                f"({self.size} bytes)")
                self.pos = len(buf)
                self.skip(pos - len(buf))
            else:
                self.pos = pos
                if done < count:
                    self.need(8, f"{what}[{done}]")


def read_gguf(path: Path) -> GgufFile:
    """The header, metadata and tensor table of the GGUF file at `path`;
    GgufError, naming the key, tensor or offset, for anything amiss."""
    path = Path(path)
    with open_model(path) as fd:
        return read_open_gguf(fd, path)


class open_model:
    """The model file at `path`, opened once for reading (`with
    open_model(path) as fd`): a regular file, or GgufError."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> int:
        try:
            # Not blocking: a FIFO at the path would wait for a writer forever.
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise GgufError(f"{self.path}: cannot be read ({e.strerror})") from None
        try:
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):
                raise GgufError(f"{self.path}: not a regular file")
        except BaseException:
            os.close(self.fd)
            raise
        return self.fd

    def __exit__(self, *_) -> None:
        os.close(self.fd)


def read_open_gguf(fd: int, path: Path) -> GgufFile:
    """read_gguf of a file already open (`path` names it in errors): the
    bytes of that very file, whatever the path names by now."""
    def refuse(problem: str, offset: int | None = None):
        where = f" (offset {offset})" if offset is not None else ""
        raise GgufError(f"{path}: not a readable GGUF file: {problem}{where}")

    try:
        return _parse(_Window(fd, os.fstat(fd).st_size, refuse), path, refuse)
    except OSError as e:
        raise GgufError(f"{path}: cannot be read ({e.strerror})") from None


def _parse(r: _Window, path: Path, refuse) -> GgufFile:
    r.need(_HEADER.size, "the header")
    magic, version, tensor_count, kv_count = _HEADER.unpack_from(r.buf, 0)
    if magic != MAGIC:
        refuse("it does not start with the GGUF magic bytes", 0)
    if version not in VERSIONS:
        refuse(f"version {version}; llama.cpp reads versions 2 and 3", 4)
    r.pos = _HEADER.size
    if kv_count > MAX_KEYS:
        refuse(f"{kv_count} metadata keys, more than the {MAX_KEYS} this reader reads", 16)
    if tensor_count > MAX_TENSORS:
        refuse(f"{tensor_count} tensors, more than the {MAX_TENSORS} this reader reads", 8)
    # The smallest key-value pair is an empty key, a type and one byte; the
    # smallest tensor entry an empty name, no dimensions, a type and an offset.
    if kv_count * 13 > r.left():
        refuse(f"{kv_count} metadata keys cannot fit in the {r.left()} bytes left", 16)
    if tensor_count * 24 > r.left():
        refuse(f"{tensor_count} tensors cannot fit in the {r.left()} bytes left", 8)

    # Keys are told apart by a digest: a key of 64 KiB costs 16 bytes here.
    seen: set[bytes] = set()
    metadata: dict[str, tuple[int, object]] = {}
    shapes: dict[str, tuple[int, object]] = {}  # shape keys of any architecture, until it is known
    for i in range(kv_count):
        at = r.offset
        key = r.string(f"metadata key {i}", MAX_KEY)
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        if digest in seen:
            refuse(f"key {shown(key)} appears twice", at)
        seen.add(digest)
        prefix, _, suffix = key.partition(".")
        if key in USED_KEYS:
            metadata[key] = _value(r, key, refuse, keep_text=key in TEXT_KEYS)
        elif suffix in SHAPE_KEYS and ARCHITECTURE.fullmatch(prefix):
            shapes[key] = _value(r, key, refuse, keep_text=False)
        else:
            _value(r, key, refuse, keep_text=False)

    kind, architecture = metadata.get("general.architecture", (None, None))
    for suffix in SHAPE_KEYS:
        key = f"{architecture}.{suffix}"
        if kind == STRING and key in shapes:
            metadata[key] = _per_layer(r, key, shapes[key], refuse) if suffix in PER_LAYER_KEYS else shapes[key]
    del shapes

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        kind, alignment = metadata["general.alignment"]
        if kind != UINT32 or alignment <= 0 or alignment & (alignment - 1):
            refuse(f"key 'general.alignment' must be a uint32 power of two, not {shown(alignment)}")

    tensors = []
    names: set[str] = set()
    for i in range(tensor_count):
        at = r.offset
        name = r.string(f"tensor {i}'s name")
        if len(name.encode()) > MAX_NAME:
            refuse(f"tensor {i}'s name is longer than {MAX_NAME} bytes", at)
        if not name:
            refuse(f"tensor {i} has an empty name", at)
        if "\0" in name:
            refuse(f"tensor {i}'s name holds a NUL byte", at)
        if name in names:
            refuse(f"tensor {name!r} appears twice", at)
        names.add(name)
        dims = r.u32(f"tensor {name!r}'s dimensions")
        if dims > MAX_DIMS:
            refuse(f"tensor {name!r} has {dims} dimensions; ggml has at most {MAX_DIMS}", r.offset - 4)
        if dims == 0:
            refuse(f"tensor {name!r} has no dimensions", r.offset - 4)
        shape = tuple(r.u64(f"tensor {name!r}'s shape") for _ in range(dims))
        elements = 1
        for n in shape:
            elements *= n
        if any(n > INT64_MAX for n in shape) or elements > INT64_MAX:
            refuse(f"tensor {name!r} has shape {shape}: more elements than ggml can count", at)
        kind = r.u32(f"tensor {name!r}'s type")
        if kind not in GGML_TYPES:
            refuse(f"tensor {name!r} has unknown ggml type {kind}", r.offset - 4)
        type_name, block, block_bytes = GGML_TYPES[kind]
        if shape and shape[0] % block:
            refuse(f"tensor {name!r} of type {type_name} has rows of {shape[0]} elements, not a multiple of "
                   f"its block of {block}", at)
        offset = r.u64(f"tensor {name!r}'s offset")
        tensors.append(Tensor(name, kind, shape, offset, elements, elements // block * block_bytes))

    if not tensors:
        refuse("it holds no tensors: no weights for llama.cpp to load", 8)
    data_offset = -(-r.offset // alignment) * alignment
    expected = 0
    for t in tensors:
        # llama.cpp lays tensors end to end, each padded to the alignment, and
        # loads no other layout: nothing overlaps, nothing is out of line.
        if t.offset != expected:
            refuse(f"tensor {t.name!r} is at data offset {t.offset}; after the tensors before it, it must be "
                   f"at {expected}")
        end = data_offset + t.offset + t.bytes
        if end > r.size:
            refuse(f"tensor {t.name!r} ends at byte {end}, past the end of the file ({r.size} bytes)")
        expected += -(-t.bytes // alignment) * alignment
    return GgufFile(version=version, size=r.size, metadata=metadata, keys=kv_count, tensors=tuple(tensors),
                    alignment=alignment, data_offset=data_offset)


def shown(value: object) -> str:
    """A value from the file, as an error shows it: quoted, on one line, and short."""
    return f"'{one_line(str(value), 120)}'"


def _value(r: _Window, key: str, refuse, keep_text: bool) -> tuple[int, object]:
    """A key's value: a scalar, a string (kept with `keep_text`, else only
    checked) or an Array, stepped over; no array is built here."""
    at = r.offset
    kind = r.u32(f"key {shown(key)}'s type")
    if kind == STRING:
        text = r.string(f"key {shown(key)}")
        return kind, text if keep_text else None
    if kind in _FIXED:
        size = _FIXED_SIZE[kind]
        r.need(size, f"key {shown(key)}")
        value = struct.unpack_from("<" + _FIXED[kind][1], r.buf, r.pos)[0]
        r.pos += size
        return kind, value
    if kind != ARRAY:
        refuse(f"key {shown(key)} has unknown value type {kind}", at)
    element = r.u32(f"key {shown(key)}'s element type")
    count = r.u64(f"key {shown(key)}'s length")
    if element == ARRAY:
        refuse(f"key {shown(key)} is an array of arrays, which llama.cpp does not load", at + 4)
    if element != STRING and element not in _FIXED:
        refuse(f"key {shown(key)} is an array of unknown value type {element}", at + 4)
    least = 8 if element == STRING else _FIXED_SIZE[element]
    if count * least > r.left():
        refuse(f"key {shown(key)} is an array of {count} values, which cannot fit in the {r.left()} bytes "
               f"left", at + 8)
    start = r.offset
    if element == STRING:
        r.skip_strings(count, f"key {shown(key)}")
    else:
        r.skip(count * least)
    return ARRAY, Array(element, count, start)


def _per_layer(r: _Window, key: str, value: tuple[int, object], refuse) -> tuple[int, object]:
    """The architecture's per-layer key, its values read when it is a short
    integer array (one per layer) and left an Array otherwise."""
    kind, array = value
    if kind != ARRAY or array.type not in INTEGER_TYPES or array.count > MAX_SMALL_ARRAY:
        return value
    size = array.count * _FIXED_SIZE[array.type]
    raw = os.pread(r.fd, size, array.offset)
    if len(raw) < size:
        refuse("the file got shorter while it was read", array.offset + len(raw))
    return ARRAY, struct.unpack_from(f"<{array.count}{_FIXED[array.type][1]}", raw)
