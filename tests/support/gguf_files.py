"""Small real GGUF files, written with the gguf package, for tests."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def make_gguf(path: Path, *, context_length: int = 4096, layers: int = 2, embedding: int = 64, heads: int = 4,
              kv_heads: int = 2, vocab: int = 100, filler: int = 0) -> Path:
    """A GGUF with llama metadata and one f32 tensor of `filler` + 16 values."""
    import gguf
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("test model")
    writer.add_context_length(context_length)
    writer.add_block_count(layers)
    writer.add_embedding_length(embedding)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_chat_template("{{ messages }}")
    writer.add_tensor("token_embd.weight", np.arange(16 + filler, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# GGUF written byte by byte, to say what the gguf package's writer would not
# (tests/support/hostile_gguf.py) and to write a large tokenizer quickly.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FORMATS = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q",
            F64: "d"}


def gguf_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def scalar(kind: int, value) -> bytes:
    """A value's type and bytes, as a key-value pair holds them."""
    body = gguf_string(value) if kind == STRING else struct.pack("<" + _FORMATS[kind], value)
    return struct.pack("<I", kind) + body


def array(element: int, values) -> bytes:
    values = list(values)
    if element == STRING:
        body = b"".join(gguf_string(v) for v in values)
    else:
        body = struct.pack(f"<{len(values)}{_FORMATS[element]}", *values)
    return struct.pack("<IIQ", ARRAY, element, len(values)) + body


def tensor_entry(name: str | bytes, shape, ggml_type: int, offset: int) -> bytes:
    return (gguf_string(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", n) for n in shape)
            + struct.pack("<IQ", ggml_type, offset))


def raw_gguf(pairs: list[tuple[str | bytes, bytes]], tensors: list[bytes] = (), data: bytes = b"", *,
             version: int = 3, kv_count: int | None = None, tensor_count: int | None = None,
             alignment: int = 32) -> bytes:
    """A GGUF file from key-value pairs (a key and its scalar() or array()
    bytes), tensor entries (tensor_entry()) and the tensor data, which
    starts at the next multiple of `alignment`."""
    head = struct.pack("<4sIQQ", b"GGUF", version, len(tensors) if tensor_count is None else tensor_count,
                       len(pairs) if kv_count is None else kv_count)
    body = head + b"".join(gguf_string(k) + v for k, v in pairs) + b"".join(tensors)
    return body + b"\0" * (-len(body) % alignment) + data


def llama_pairs(*, name: str = "test model", context_length: int = 4096, layers: int = 2, embedding: int = 64,
                heads: int = 4, kv_heads: int = 2, file_type: int = 0) -> list[tuple[str, bytes]]:
    return [("general.architecture", scalar(STRING, "llama")), ("general.name", scalar(STRING, name)),
            ("llama.context_length", scalar(U32, context_length)), ("llama.block_count", scalar(U32, layers)),
            ("llama.embedding_length", scalar(U32, embedding)),
            ("llama.attention.head_count", scalar(U32, heads)),
            ("llama.attention.head_count_kv", scalar(U32, kv_heads)), ("general.file_type", scalar(U32, file_type))]


def one_f32_tensor(values: int = 16) -> tuple[list[bytes], bytes]:
    return [tensor_entry("token_embd.weight", (values,), 0, 0)], struct.pack(f"<{values}f", *range(values))


def large_vocabulary_gguf(path: Path, *, tokens: int = 128_256, merges: int = 280_147) -> Path:
    """A GGUF with a Llama-3-size tokenizer (128,256 tokens and 280,147 merges
    by default: about 8.8 MB of metadata, as Llama 3's) and small tensors."""
    words = [f"\u0120tok{i}" if i % 3 else f"t\u00f6k{i}" for i in range(tokens)]
    pairs = llama_pairs(name="Large Vocabulary 8B", context_length=131_072, layers=32, embedding=4096, heads=32,
                        kv_heads=8, file_type=15)
    pairs += [("llama.feed_forward_length", scalar(U32, 14_336)), ("llama.vocab_size", scalar(U32, tokens)),
              ("llama.rope.freq_base", scalar(F32, 500_000.0))]
    pairs += [("tokenizer.ggml.model", scalar(STRING, "gpt2")), ("tokenizer.ggml.pre", scalar(STRING, "llama-bpe")),
              ("tokenizer.ggml.tokens", array(STRING, words)),
              ("tokenizer.ggml.token_type", array(I32, (1 for _ in range(tokens)))),
              ("tokenizer.ggml.merges", array(STRING, (f"\u0120t ok{i} m{i % 977}" for i in range(merges)))),
              ("tokenizer.ggml.bos_token_id", scalar(U32, 128_000)),
              ("tokenizer.chat_template", scalar(STRING, "{% for m in messages %}{{ m['content'] }}{% endfor %}" * 40))]
    entries, data = [], b""
    for i, (name, shape, kind, size) in enumerate([("token_embd.weight", (4096, 4), 12, 4 * 16 * 144),
                                                   ("output_norm.weight", (4096,), 0, 4096 * 4)]):
        entries.append(tensor_entry(name, shape, kind, len(data)))
        data += bytes(size) + b"\0" * (-size % 32)
    path.write_bytes(raw_gguf(pairs, entries, data))
    return path
