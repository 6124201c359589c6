"""What a GGUF file says of itself, read from its header and metadata without
loading the weights (the `gguf` package maps the file and reads only those),
and what the backend will need to run it: the weights plus the KV cache at
the policy's context length plus llama.cpp's work buffers and the server.

The estimate is checked against the backend's measured memory for the
quick-start model (tests/integration/test_models.py, docs/models.md)."""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher.errors import SandboxError
from launcher.spec import memory_bytes

# llama-cpp-python's server defaults: a batch of 512 tokens, an f16 KV cache.
BATCH = 512
KV_BYTES_PER_ELEMENT = 2
# The server process without a model: Python, llama-cpp-python, uvicorn
# (measured in the backend image).
SERVER_BYTES = 45 * 2**20


class GgufError(SandboxError):
    exit_code = 2


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
    try:
        import gguf
        reader = gguf.GGUFReader(str(path), "r")
    except (OSError, ValueError, IndexError, KeyError) as e:
        raise GgufError(f"{path}: not a readable GGUF file ({e})") from None

    def field(key: str):
        found = reader.fields.get(key)
        if found is None:
            return None
        try:
            return found.contents()
        except (ValueError, IndexError, TypeError):
            return None

    arch = field("general.architecture") or "unknown"
    file_type = field("general.file_type")
    try:
        quantization = gguf.LlamaFileType(file_type).name if file_type is not None else "unknown"
    except ValueError:
        quantization = f"file type {file_type}"
    heads = field(f"{arch}.attention.head_count")
    embedding = field(f"{arch}.embedding_length")
    head_dim = embedding // heads if isinstance(embedding, int) and isinstance(heads, int) and heads else None
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = field(f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else None)
    kv_heads = field(f"{arch}.attention.head_count_kv")
    return GgufFacts(
        file=str(path), size_bytes=path.stat().st_size, architecture=arch, name=field("general.name"),
        parameters=sum(int(t.n_elements) for t in reader.tensors), quantization=quantization,
        context_length=field(f"{arch}.context_length"), layers=field(f"{arch}.block_count"),
        embedding=embedding, feed_forward=field(f"{arch}.feed_forward_length"), heads=heads,
        kv_heads=kv_heads if isinstance(kv_heads, int) else heads,
        key_length=field(f"{arch}.attention.key_length") or head_dim,
        value_length=field(f"{arch}.attention.value_length") or head_dim,
        vocab=vocab, chat_template=field("tokenizer.chat_template") is not None,
        tensor_bytes=sum(int(t.n_bytes) for t in reader.tensors))


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
