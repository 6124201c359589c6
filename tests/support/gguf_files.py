"""Small real GGUF files, written with the gguf package, for tests."""
from __future__ import annotations

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
