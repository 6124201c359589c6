"""GGUF files that lie about themselves, of the kinds seen, each with what
the reader must say of it (a fragment of its error), or None for a file
that is well formed but carries text a terminal would obey.

    python -m tests.support.hostile_gguf DIR    # writes DIR/NAME.gguf for each
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

from tests.support.gguf_files import (
    ARRAY,
    F32,
    I32,
    STRING,
    U8,
    U32,
    U64,
    array,
    gguf_string,
    llama_pairs,
    one_f32_tensor,
    raw_gguf,
    scalar,
    tensor_entry,
)

TERMINAL_NAME = "\x1b]0;owned\x07\x1b[2J\x1b[3Jevil\u202etxt.exe\u2066"


def well_formed(**shape) -> bytes:
    entries, data = one_f32_tensor()
    return raw_gguf(llama_pairs(**shape), entries, data)


def _nested_arrays(depth: int) -> bytes:
    # Each level an array of one array, the innermost of one uint8.
    return struct.pack("<I", ARRAY) + struct.pack("<IQ", ARRAY, 1) * (depth - 1) + struct.pack("<IQB", U8, 1, 7)


def _with(pair: tuple[str | bytes, bytes], **raw) -> bytes:
    entries, data = one_f32_tensor()
    return raw_gguf(llama_pairs() + [pair], entries, data, **raw)


def _tensors(entries: list[bytes], data: bytes) -> bytes:
    return raw_gguf(llama_pairs(), entries, data)


F32_16 = struct.pack("<16f", *range(16))


def _attention(*pairs: tuple[str, bytes], drop: tuple[str, ...] = ()) -> bytes:
    """Two layers with attention tensors, the llama keys less `drop`, and `pairs` in place of theirs."""
    replaced = {k for k, _ in pairs} | set(drop)
    entries = [tensor_entry(name, (16,), 0, 64 * i)
               for i, name in enumerate(["token_embd.weight", "blk.0.attn_q.weight", "blk.1.attn_q.weight"])]
    return raw_gguf([p for p in llama_pairs() if p[0] not in replaced] + list(pairs), entries, F32_16 * 3)

# name -> (bytes, what the error must say)
FIXTURES: dict[str, tuple[bytes, str | None]] = {
    "truncated-66-bytes": (well_formed()[:66], "8 metadata keys cannot fit in the 42 bytes left"),
    "truncated-in-a-key": (raw_gguf([("general." + "x" * 32, scalar(U32, 1))])[:50],
                           "metadata key 0 needs 40 bytes at offset 32, but the file ends 18 bytes later"),
    "unknown-value-type": (_with(("general.odd", struct.pack("<IQ", 13, 0))),
                           "key 'general.odd' has unknown value type 13"),
    "version-4294967295": (raw_gguf(llama_pairs(), version=2**32 - 1), "version 4294967295"),
    "version-1": (raw_gguf(llama_pairs(), version=1), "version 1;"),
    "not-gguf": (b"GGML" + well_formed()[4:], "does not start with the GGUF magic"),
    "arrays-nested-50000-deep": (_with(("general.deep", _nested_arrays(50_000))),
                                 "key 'general.deep' is an array of arrays"),
    "lying-shapes": (raw_gguf(
        [("general.architecture", scalar(STRING, "llama")),
         ("llama.context_length", scalar(U64, 2**63 - 1)), ("llama.embedding_length", scalar(I32, -1)),
         ("llama.block_count", scalar(U64, 2**62))], *one_f32_tensor()), "key 'llama.block_count' holds"),
    "context-of-2^63": (raw_gguf([("general.architecture", scalar(STRING, "llama")),
                                  ("llama.context_length", scalar(U64, 2**63 - 1))], *one_f32_tensor()),
                        "key 'llama.context_length' holds 9223372036854775807"),
    "negative-embedding": (raw_gguf([("general.architecture", scalar(STRING, "llama")),
                                     ("llama.embedding_length", scalar(I32, -1))], *one_f32_tensor()),
                           "key 'llama.embedding_length' holds -1"),
    "heads-as-text": (raw_gguf([("general.architecture", scalar(STRING, "llama")),
                                ("llama.attention.head_count", scalar(STRING, "nine"))], *one_f32_tensor()),
                      "key 'llama.attention.head_count' must be an integer"),
    "terminal-control-name": (well_formed(name=TERMINAL_NAME), None),
    "keys-past-the-end": (raw_gguf(llama_pairs(), kv_count=65_536), "metadata keys cannot fit"),
    "tensors-past-the-end": (raw_gguf(llama_pairs(), tensor_count=65_536), "tensors cannot fit"),
    "string-past-the-end": (raw_gguf([], kv_count=1, alignment=1) + struct.pack("<Q", 2**64 - 1) + bytes(16),
                            "metadata key 0 is a string of 18446744073709551615 bytes"),
    "array-past-the-end": (_with(("tokenizer.ggml.scores", struct.pack("<IIQ", ARRAY, F32, 2**61))),
                           "key 'tokenizer.ggml.scores' is an array of 2305843009213693952 values"),
    "token-past-the-end": (_with(("tokenizer.ggml.tokens", struct.pack("<IIQ", ARRAY, STRING, 2)
                                  + gguf_string("a") + struct.pack("<Q", 2**40))),
                           "key 'tokenizer.ggml.tokens'[1] runs to byte 1099511628176, past the end of the file"),
    "duplicate-key": (_with(("llama.block_count", scalar(U32, 99))), "key 'llama.block_count' appears twice"),
    "key-not-utf8": (_with((b"general.\xff\xfe", scalar(U32, 1))), "metadata key 8 is not UTF-8"),
    "name-not-utf8": (_with(("general.title", struct.pack("<I", STRING) + gguf_string(b"\xc3\x28"))),
                      "key 'general.title' is not UTF-8"),
    "alignment-not-a-power-of-two": (_with(("general.alignment", scalar(U32, 24))), "general.alignment"),
    "tensor-unknown-type": (_tensors([tensor_entry("t", (16,), 99, 0)], F32_16), "unknown ggml type 99"),
    "tensor-five-dimensions": (_tensors([tensor_entry("t", (1, 1, 1, 1, 16), 0, 0)], F32_16), "5 dimensions"),
    "tensor-duplicate-name": (_tensors([tensor_entry("t", (16,), 0, 0), tensor_entry("t", (16,), 0, 64)],
                                       F32_16 * 2), "tensor 't' appears twice"),
    "tensor-name-too-long": (_tensors([tensor_entry("t" * 64, (16,), 0, 0)], F32_16), "longer than 63 bytes"),
    "tensor-misaligned": (_tensors([tensor_entry("a", (4,), 0, 0), tensor_entry("b", (4,), 0, 16)], F32_16),
                          "tensor 'b' is at data offset 16; after the tensors before it, it must be at 32"),
    "tensors-overlapping": (_tensors([tensor_entry("a", (16,), 0, 0), tensor_entry("b", (16,), 0, 0)],
                                     F32_16 * 2), "tensor 'b' is at data offset 0"),
    "tensor-past-the-end": (_tensors([tensor_entry("t", (1024,), 0, 0)], F32_16), "past the end of the file"),
    "tensor-offset-far": (_tensors([tensor_entry("t", (16,), 0, 2**63)], F32_16), "at data offset 9223372036854775808"),
    "tensor-elements-overflow": (_tensors([tensor_entry("t", (2**32, 2**32), 0, 0)], F32_16),
                                 "more elements than ggml can count"),
    # Files llama.cpp would not load, which gave a confident estimate all the same.
    "head-count-0": (_attention(("llama.attention.head_count", scalar(U32, 0))),
                     "key 'llama.attention.head_count' gives layer 0 no heads, but it has attention tensors"),
    "head-count-0-per-layer": (_attention(("llama.attention.head_count", array(U32, [0, 0]))),
                               "key 'llama.attention.head_count' gives layer 0 no heads"),
    "head-count-kv-0": (_attention(("llama.attention.head_count_kv", scalar(U32, 0))),
                        "key 'llama.attention.head_count_kv' gives layer 0 no heads"),
    "per-layer-wrong-length": (_attention(("llama.attention.head_count", array(U32, [4] * 7))),
                               "key 'llama.attention.head_count' has 7 values; llama.block_count is 2"),
    "architecture-missing": (_attention(drop=("general.architecture",)), "key 'general.architecture' is missing"),
    "architecture-empty": (_attention(("general.architecture", scalar(STRING, ""))),
                           "key 'general.architecture' is ''"),
    "block-count-missing": (_attention(drop=("llama.block_count",)), "key 'llama.block_count' is missing"),
    "no-tensors": (raw_gguf(llama_pairs()), "no tensors"),
    "tensor-no-dimensions": (_tensors([tensor_entry("t", (), 0, 0)], F32_16), "tensor 't' has no dimensions"),
    "tensor-empty-name": (_tensors([tensor_entry("", (16,), 0, 0)], F32_16), "tensor 0 has an empty name"),
    "tensor-name-with-nul": (_tensors([tensor_entry(b"a\0b", (16,), 0, 0)], F32_16),
                             "tensor 0's name holds a NUL byte"),
    # Each key or tensor cost a Python object or more, whatever the file's size (tried as an attacker would).
    "keys-past-the-cap": (raw_gguf([(f"k{i}", scalar(U8, 1)) for i in range(65_537)], *one_f32_tensor()),
                          "65537 metadata keys, more than the 65536"),
    "tensors-past-the-cap": (raw_gguf(llama_pairs(), [tensor_entry(f"t{i}", (8,), 0, 32 * i) for i in range(65_537)],
                                      bytes(32 * 65_537)), "65537 tensors, more than the 65536"),
    "tensor-row-not-whole-blocks": (_tensors([tensor_entry("t", (16,), 2, 0)], F32_16),
                                    "rows of 16 elements, not a multiple of its block of 32"),
}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    directory = Path(argv[0])
    directory.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in FIXTURES.items():
        (directory / f"{name}.gguf").write_bytes(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
