"""What a GGUF file says of itself, read from its header and metadata without
loading the weights (launcher/models/gguf_reader.py, a reader for hostile
files), and what the backend will need to run it: the weights plus the KV cache at
the policy's context length plus llama.cpp's work buffers and the server.

The estimate is checked against the backend's measured memory for the
quick-start model (tests/integration/test_models.py, docs/models.md)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from launcher.access import state_dir
from launcher.errors import SandboxError
from launcher.models.gguf_reader import (
    ARCHITECTURE,
    ARRAY,
    INTEGER_TYPES,
    MAX_SMALL_ARRAY,
    STRING,
    Array,
    GgufError,
    GgufFile,
    open_model,
    read_gguf,
    read_open_gguf,
    shown,
)
from launcher.policy.files import sha256_of_open
from launcher.private import private_directory, write_private
from launcher.spec import memory_bytes

# llama-cpp-python's server defaults: a batch of 512 tokens, an f16 KV cache.
BATCH = 512
KV_BYTES_PER_ELEMENT = 2
# The server process without a model: Python, llama-cpp-python, uvicorn
# (measured in the backend image).
SERVER_BYTES = 45 * 2**20


# Facts are kept by sha256 in the state directory, a small file each, the
# newest FACTS_KEPT of them; READER_VERSION changes when the reader would
# read a file differently, so that older facts are read again.
FACTS_KEPT = 256
READER_VERSION = 2
_ENTRY_BYTES = 64 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A layer's attention tensors, by llama.cpp's names (blk.3.attn_q.weight, blk.3.attn_qkv.weight).
_ATTENTION = re.compile(r"blk\.(\d{1,9})\.attn_(?:q|k|v|qkv)\.weight")

# What each shape key may hold. Far past any model there is, and small
# enough that the estimate stays a number one can read: a file claiming more
# is refused, not believed.
MAX_CONTEXT = 2**27  # 134M tokens
MAX_LAYERS = MAX_SMALL_ARRAY
MAX_WIDTH = 2**20  # embedding, feed-forward, key and value widths
MAX_HEADS = 2**14
MAX_VOCAB = 2**24

# llama.cpp's file types (general.file_type): the quantization a file was
# made with, by name.
FILE_TYPES = {
    0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0", 8: "MOSTLY_Q5_0",
    9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S", 12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L",
    14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K",
    19: "MOSTLY_IQ2_XXS", 20: "MOSTLY_IQ2_XS", 21: "MOSTLY_Q2_K_S", 22: "MOSTLY_IQ3_XS", 23: "MOSTLY_IQ3_XXS",
    24: "MOSTLY_IQ1_S", 25: "MOSTLY_IQ4_NL", 26: "MOSTLY_IQ3_S", 27: "MOSTLY_IQ3_M", 28: "MOSTLY_IQ2_S",
    29: "MOSTLY_IQ2_M", 30: "MOSTLY_IQ4_XS", 31: "MOSTLY_IQ1_M", 32: "MOSTLY_BF16", 36: "MOSTLY_TQ1_0",
    37: "MOSTLY_TQ2_0", 38: "MOSTLY_MXFP4_MOE", 39: "MOSTLY_NVFP4", 40: "MOSTLY_Q1_0", 1024: "GUESSED",
}


@dataclass(frozen=True)
class GgufFacts:
    file: str
    size_bytes: int
    architecture: str
    name: str | None
    parameters: int
    quantization: str  # the file type: MOSTLY_Q4_1, MOSTLY_F16...
    context_length: int | None  # the context the model was trained for
    layers: int | None
    embedding: int | None
    feed_forward: int | None
    heads: int | None
    kv_heads: int | None
    key_length: int | None
    value_length: int | None
    vocab: int | None
    chat_template: bool
    tensor_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def read_facts(path: Path) -> GgufFacts:
    """What the file at `path` says of itself, read and checked now."""
    return facts_of(read_gguf(path), path)


def facts_of(gguf: GgufFile, path: Path) -> GgufFacts:
    meta = gguf.metadata

    def refuse(key: str, problem: str):
        raise GgufError(f"{path}: not a readable GGUF file: key {shown(key)} {problem}")

    def text(key: str) -> str | None:
        kind, value = meta.get(key, (STRING, None))
        if kind != STRING:
            refuse(key, "must be a string")
        return value

    def count(key: str, low: int, high: int, per_layer: bool = False) -> int | None:
        """An integer key within [low, high]; for a key that may give one
        value per layer, the largest (the memory estimate's worst layer)."""
        values = per_layer_values(key, low, high, per_layer)
        return None if values is None else max(values)

    def per_layer_values(key: str, low: int, high: int, per_layer: bool = True) -> tuple[int, ...] | None:
        if key not in meta:
            return None
        kind, value = meta[key]
        values = value if per_layer and kind == ARRAY and isinstance(value, tuple) and value else (
            (value,) if kind in INTEGER_TYPES else None)
        if values is None:
            refuse(key, "must be an integer" + (" or a short array of integers" if per_layer else ""))
        if not all(low <= v <= high for v in values):
            refuse(key, f"holds {max(values) if max(values) > high else min(values)}, outside {low}..{high}")
        return values

    # llama.cpp loads no file without a known architecture, and reads its
    # shape keys under that architecture's name.
    arch = text("general.architecture")
    if arch is None:
        refuse("general.architecture", "is missing; llama.cpp loads no model without it")
    if not ARCHITECTURE.fullmatch(arch):
        refuse("general.architecture", f"is {shown(arch)}, not an architecture llama.cpp knows")
    file_type = count("general.file_type", 0, 2**32 - 1)
    quantization = ("unknown" if file_type is None else FILE_TYPES.get(file_type, f"file type {file_type}"))
    layers = count(f"{arch}.block_count", 1, MAX_LAYERS)
    embedding = count(f"{arch}.embedding_length", 1, MAX_WIDTH)
    context_length = count(f"{arch}.context_length", 1, MAX_CONTEXT)
    heads = per_layer_values(f"{arch}.attention.head_count", 0, MAX_HEADS)
    kv_heads = per_layer_values(f"{arch}.attention.head_count_kv", 0, MAX_HEADS)
    feed_forward = per_layer_values(f"{arch}.feed_forward_length", 0, MAX_WIDTH)
    for key, value in ((f"{arch}.context_length", context_length), (f"{arch}.embedding_length", embedding),
                       (f"{arch}.block_count", layers)):
        if value is None:
            refuse(key, "is missing; llama.cpp loads no model without it")
    for suffix, values in (("attention.head_count", heads), ("attention.head_count_kv", kv_heads),
                           ("feed_forward_length", feed_forward)):
        if values is not None and len(values) not in (1, layers):
            refuse(f"{arch}.{suffix}", f"has {len(values)} values; {arch}.block_count is {layers}, and "
                                       f"llama.cpp wants one value or one per layer")
    # A head count of 0 is a layer without attention (a state-space model's,
    # as mamba's); a layer with attention tensors and no heads, llama.cpp
    # cannot load, and the estimate would leave its KV cache out.
    attending = sorted({int(m.group(1)) for t in gguf.tensors if (m := _ATTENTION.fullmatch(t.name))})
    for suffix, values in (("attention.head_count", heads), ("attention.head_count_kv", kv_heads or heads)):
        for layer in attending:
            if layer < layers and (values is None or values[layer if len(values) > 1 else 0] == 0):
                refuse(f"{arch}.{suffix}", f"gives layer {layer} no heads, but it has attention tensors")
    head_dim = embedding // max(heads) if heads and max(heads) else None
    vocab = count(f"{arch}.vocab_size", 1, MAX_VOCAB)
    if vocab is None and "tokenizer.ggml.tokens" in meta:
        kind, tokens = meta["tokenizer.ggml.tokens"]
        if kind != ARRAY or not isinstance(tokens, Array) or tokens.type != STRING:
            refuse("tokenizer.ggml.tokens", "must be an array of strings")
        if not 1 <= tokens.count <= MAX_VOCAB:
            refuse("tokenizer.ggml.tokens", f"holds {tokens.count} tokens, outside 1..{MAX_VOCAB}")
        vocab = tokens.count
    if "tokenizer.chat_template" in meta:
        text("tokenizer.chat_template")
    return GgufFacts(
        file=str(path), size_bytes=gguf.size, architecture=arch, name=text("general.name"),
        parameters=sum(t.elements for t in gguf.tensors), quantization=quantization,
        context_length=context_length, layers=layers, embedding=embedding,
        feed_forward=max(feed_forward) if feed_forward else None, heads=max(heads) if heads else None,
        kv_heads=max(kv_heads) if kv_heads else (max(heads) if heads else None),
        key_length=count(f"{arch}.attention.key_length", 1, MAX_WIDTH) or head_dim,
        value_length=count(f"{arch}.attention.value_length", 1, MAX_WIDTH) or head_dim,
        vocab=vocab, chat_template="tokenizer.chat_template" in meta, tensor_bytes=sum(t.bytes for t in gguf.tensors))


def check_gguf(path: Path, sha256: str | None = None) -> GgufFacts:
    """The facts of a model file, or GgufError naming the key, tensor or
    offset that makes it unusable: what `model pull` asks of a file before
    keeping it. With the sha256 of the bytes checked, the facts are kept
    under it, so no later `validate` or `up` reads them again."""
    facts = read_facts(path)
    if sha256:
        remember_facts(sha256, facts)
    return facts


def facts_for(path: Path, pinned: str | None = None) -> GgufFacts:
    """The facts of the model at `path`, kept by its content: a model read
    once is not read again, whatever its name, while its bytes stay the
    same (the sha256 comes from launcher/policy/files.py's cache, which
    hashes again when the file changed). The file is opened once, and
    hashed and read through that one descriptor: with the sha256 the policy
    `pinned`, the facts are those of the pinned bytes, or GgufError, even
    if the path was pointed at another file after the policy's check."""
    with open_model(path) as fd:
        try:
            before = _stamp(fd)
            sha256 = sha256_of_open(fd, path)
        except OSError as e:
            raise GgufError(f"{path}: cannot be read ({e.strerror})") from None
        if pinned is not None and sha256 != pinned:
            raise GgufError(f"{path}: its sha256 is {sha256}, not the {pinned} the policy pins: the file changed "
                            f"after it was checked")
        kept = _kept_facts(sha256, path)
        if kept is not None:
            return kept
        facts = facts_of(read_open_gguf(fd, path), path)
        # Facts of bytes other than those hashed must not be kept under the hash.
        try:
            unchanged = _stamp(fd) == before
        except OSError:
            unchanged = False
    if unchanged:
        remember_facts(sha256, facts)
    elif pinned is not None:
        raise GgufError(f"{path}: changed while it was read; its facts may not be those of the pinned file")
    return facts


def facts_dir() -> Path:
    return state_dir() / "model-facts"


def remember_facts(sha256: str, facts: GgufFacts) -> None:
    if not _SHA256.fullmatch(sha256):
        return
    entry = {"reader": READER_VERSION, "sha256": sha256,
             **{k: v for k, v in facts.to_dict().items() if k != "file"}}
    try:
        directory = private_directory(facts_dir())
        write_private(directory / f"{sha256}.json", json.dumps(entry))
        kept = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in kept[:-FACTS_KEPT]:
            old.unlink(missing_ok=True)
    except (OSError, SandboxError):
        pass  # facts that cannot be kept cost a read next time, nothing else


def _kept_facts(sha256: str, path: Path) -> GgufFacts | None:
    if not _SHA256.fullmatch(sha256):
        return None
    try:
        directory = facts_dir()
        if os.lstat(directory).st_uid != os.geteuid():
            return None
        fd = os.open(directory / f"{sha256}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(_ENTRY_BYTES + 1)
        if len(raw) > _ENTRY_BYTES:
            return None
        entry = json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or entry.get("reader") != READER_VERSION or entry.get("sha256") != sha256:
        return None
    values = {"file": str(path)}
    for f in fields(GgufFacts):
        if f.name != "file":
            value = entry.get(f.name)
            if not _KINDS[f.type](value):
                return None
            values[f.name] = value
    return GgufFacts(**values)


def _stamp(fd: int) -> tuple:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_KINDS = {"int": _is_int, "int | None": lambda v: v is None or _is_int(v), "str": lambda v: isinstance(v, str),
          "str | None": lambda v: v is None or isinstance(v, str), "bool": lambda v: isinstance(v, bool)}


@dataclass(frozen=True)
class Estimate:
    context: int
    weights: int
    kv_cache: int
    buffers: int  # llama.cpp's compute buffers for one batch
    server: int

    # The weights are mapped from the file: page cache the kernel may drop
    # and read again (slowly), not memory a limit kills for. The rest is.
    @property
    def working(self) -> int:
        return self.kv_cache + self.buffers + self.server

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.buffers + self.server

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "working": self.working}

    def describe(self) -> str:
        return (f"about {gib(self.total)} at context {self.context} (weights {gib(self.weights)}, mapped from "
                f"the file; KV cache {gib(self.kv_cache)}, buffers {gib(self.buffers)}, server {gib(self.server)})")


def estimate(facts: GgufFacts, context: int) -> Estimate:
    layers, kv_heads = facts.layers or 0, facts.kv_heads or 0
    kv = layers * context * kv_heads * ((facts.key_length or 0) + (facts.value_length or 0)) * KV_BYTES_PER_ELEMENT
    # One batch through a layer, in f32: the attention scores of each head
    # against the whole context, and a few vectors of the embedding and
    # feed-forward widths per token.
    batch = min(BATCH, context)
    embedding = facts.embedding or 0
    buffers = batch * ((facts.heads or 0) * context + 8 * embedding + 3 * (facts.feed_forward or 4 * embedding)) * 4
    return Estimate(context, facts.tensor_bytes, kv, buffers, SERVER_BYTES)


def together(first: Estimate, second: Estimate) -> Estimate:
    """Two models served at once, each by its own server (a chat model and
    the embedding model): what both need, at the first one's context."""
    return Estimate(first.context, first.weights + second.weights, first.kv_cache + second.kv_cache,
                    first.buffers + second.buffers, first.server + second.server)


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@dataclass(frozen=True)
class Machine:
    available_ram: int | None  # MemAvailable
    gpus: tuple[tuple[str, int, int], ...]  # (name, total bytes, free bytes) per GPU


def this_machine() -> Machine:
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    gpus: list[tuple[str, int, int]] = []
    if shutil.which("nvidia-smi"):
        run = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,memory.free",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False,
                             timeout=30)
        for line in run.stdout.splitlines() if run.returncode == 0 else []:
            name, total, free = (part.strip() for part in line.rsplit(",", 2))
            if total.isdigit() and free.isdigit():
                gpus.append((name, int(total) * 2**20, int(free) * 2**20))
    return Machine(available, tuple(gpus))


def fit_warnings(need: Estimate, memory_limit: str | None, machine: Machine, on_gpu: bool) -> list[str]:
    """Why the backend may be killed for lack of memory, if it may."""
    warnings = []
    if memory_limit:
        limit = memory_bytes(memory_limit)
        if need.working > limit:
            warnings.append(f"needs {need.describe()}; its KV cache, buffers and server alone are more than "
                            f"backend.memory {memory_limit}: the backend would be killed for lack of memory")
        elif need.total > limit:
            warnings.append(f"needs {need.describe()}, more than backend.memory {memory_limit}: the weights "
                            f"will not stay in memory and every answer reads them from disk again")
    if machine.available_ram is not None and not on_gpu and need.total > machine.available_ram:
        warnings.append(f"needs {gib(need.total)}, more than this machine's free memory "
                        f"({gib(machine.available_ram)})")
    if on_gpu and machine.gpus and all(need.weights + need.kv_cache > free for _, _, free in machine.gpus):
        warnings.append(f"its weights and KV cache ({gib(need.weights + need.kv_cache)}) fit no GPU's free memory "
                        f"({', '.join(f'{name}: {gib(free)}' for name, _, free in machine.gpus)}); "
                        f"lower backend.gpu_layers to keep some layers on the CPU")
    return warnings


def context_warning(facts: GgufFacts, context: int) -> str | None:
    if facts.context_length and context > facts.context_length:
        return (f"context_length {context} is more than the {facts.context_length} tokens the model was "
                f"trained for ({os.path.basename(facts.file)}); answers past that degrade")
    return None
