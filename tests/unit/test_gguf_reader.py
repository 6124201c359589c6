"""The GGUF reader as a parser of hostile input: files that lie about
themselves are refused with the key or offset named (exit 2, no traceback),
text from a model is escaped wherever it is printed, what it reads agrees
with the gguf package's reading, and no mutation of a real file or generated
structure gets anything out of it but its own error."""
import json
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from launcher.cli import app
from launcher.models.facts import FILE_TYPES, GgufError, facts_of, read_facts
from launcher.models.gguf_reader import GGML_TYPES, SHAPE_KEYS, USED_KEYS, Array, read_gguf
from tests.support import gguf_files as g
from tests.support.hostile_gguf import FIXTURES, TERMINAL_NAME, main, well_formed
from tests.unit.helpers import policy_for_model

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
runner = CliRunner()
REFUSED = [name for name, (_, expected) in FIXTURES.items() if expected]


def written(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(FIXTURES[name][0])
    return path


@pytest.mark.parametrize("name", REFUSED)
def test_a_file_that_lies_is_refused_naming_the_key_or_offset(tmp_path, name):
    path = written(tmp_path, name)
    with pytest.raises(GgufError) as refused:
        read_facts(path)
    assert str(refused.value).startswith(f"{path}: not a readable GGUF file: ")
    assert FIXTURES[name][1] in str(refused.value)


def test_the_control_a_well_formed_file_is_read(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(well_formed(context_length=8192, layers=30, embedding=576, heads=9, kv_heads=3))
    facts = read_facts(path)
    assert (facts.context_length, facts.layers, facts.embedding, facts.heads, facts.kv_heads) == (8192, 30, 576, 9, 3)
    assert (facts.key_length, facts.parameters, facts.tensor_bytes, facts.quantization) == (64, 16, 64, "ALL_F32")


# Tried as a new user would: each of these ended in a traceback, in exit 0
# with a nonsense estimate, or was printed raw.
@pytest.mark.parametrize("name", ["arrays-nested-50000-deep", "lying-shapes", "context-of-2^63",
                                  "negative-embedding", "truncated-66-bytes", "unknown-value-type",
                                  "version-4294967295"])
def test_model_inspect_refuses_a_lying_file_with_exit_2_and_no_traceback(tmp_path, name):
    path = written(tmp_path, name)
    result = runner.invoke(app, ["model", "inspect", str(path)])
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "needs about" not in result.output
    assert FIXTURES[name][1] in result.stderr


def test_model_inspect_escapes_what_a_terminal_would_obey(tmp_path):
    path = written(tmp_path, "terminal-control-name")
    result = runner.invoke(app, ["model", "inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\u202e" not in result.output and "\u2066" not in result.output
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x1b[3Jevil\\u202etxt.exe\\u2066" in result.stdout
    as_json = runner.invoke(app, ["model", "inspect", "--json", str(path)])
    assert "\x1b" not in as_json.stdout and "\u202e" not in as_json.stdout
    assert json.loads(as_json.stdout)["facts"]["name"] == TERMINAL_NAME  # programs read it exactly


# Tried as an attacker would: a newline in a model's name printed a line of
# its own choosing; a zero-width space went out raw; a name of megabytes was
# printed whole.
def test_model_inspect_prints_a_models_text_on_one_bounded_line(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(well_formed(name="x\nerror: fake\r\b\b\b\u200bz"))
    result = runner.invoke(app, ["model", "inspect", str(path)])
    assert result.exit_code == 0, result.output
    [name] = [line for line in result.stdout.splitlines() if line.startswith("name ")]
    assert name.split(None, 1)[1] == "x\\x0aerror: fake\\x0d\\x08\\x08\\x08\\u200bz"
    assert not any(line.startswith("error") for line in result.output.splitlines())
    path.write_bytes(well_formed(name="n" * 2**20))
    long = runner.invoke(app, ["model", "inspect", str(path)])
    assert long.exit_code == 0 and len(long.stdout) < 4000, len(long.stdout)
    assert "more characters" in long.stdout
    # The control: a plain name, and text beyond ASCII, print as they are.
    path.write_bytes(well_formed(name="Café 日本 7B"))
    plain = runner.invoke(app, ["model", "inspect", str(path)])
    assert any(line.split(None, 1)[1] == "Café 日本 7B" for line in plain.stdout.splitlines()
               if line.startswith("name "))


def test_memory_stays_bounded_whatever_the_metadata_holds(tmp_path):
    # Tried as an attacker would: 75,000 keys, each an array of 4096 bytes,
    # took 2.5 GB to read; here 4,200 of them, under names the launcher
    # reads too (an architecture's per-layer keys) and names it does not.
    path = tmp_path / "m.gguf"
    arrays = [(f"a{i}.attention.head_count" if i % 2 else f"k{i}", g.array(g.U8, [1] * 4096)) for i in range(4200)]
    path.write_bytes(g.raw_gguf(g.llama_pairs() + arrays, *g.one_f32_tensor()))
    tracemalloc.start()
    try:
        facts = read_facts(path)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert facts.heads == 4
    assert path.stat().st_size > 16 * 2**20 and peak < 8 * 2**20, peak


def test_a_model_without_attention_may_have_no_heads(tmp_path):
    # The control for the head counts refused: a state-space model (mamba)
    # has no attention tensors and says so with head counts of 0, and
    # llama.cpp loads it.
    path = tmp_path / "m.gguf"
    path.write_bytes(well_formed(heads=0, kv_heads=0))
    assert read_facts(path).heads == 0


def test_validate_refuses_a_model_that_lies_about_its_shape(tmp_path, monkeypatch):
    policy_for_model(tmp_path, written(tmp_path, "lying-shapes"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", "--no-port-check", "p.yaml"])
    assert result.exit_code == 2, result.output
    assert "needs about" not in result.output and "9223372036854775807" not in result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("p.yaml:5:11 models[0].path: ") and "key 'llama.block_count' holds" in line
    # The control: the same policy with a model that tells the truth.
    truthful = tmp_path / "ok.gguf"
    truthful.write_bytes(well_formed())
    policy_for_model(tmp_path, truthful)
    assert runner.invoke(app, ["validate", "--no-port-check", "p.yaml"]).exit_code == 0


def test_the_hostile_fixtures_are_written_by_a_script(tmp_path):
    assert main([str(tmp_path / "out")]) == 0
    assert sorted(p.stem for p in (tmp_path / "out").iterdir()) == sorted(FIXTURES)


# --- the same values as the gguf package -----------------------------------

def values_by_gguf(path: Path) -> tuple[dict, list, int]:
    import gguf
    reader = gguf.GGUFReader(str(path), "r")
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # the header, as the gguf package shows it
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            metadata[key] = (field.types[1], len(field.data))
        else:
            metadata[key] = field.contents()
    tensors = [(t.name, int(t.tensor_type), tuple(int(n) for n in t.shape), int(t.n_elements), int(t.n_bytes),
                int(t.data_offset)) for t in reader.tensors]
    return metadata, tensors, reader.alignment


def values_by_us(path: Path) -> tuple[dict, list, int]:
    read = read_gguf(path)
    metadata = {}
    for key, (kind, value) in read.metadata.items():
        if isinstance(value, Array):
            metadata[key] = (value.type, value.count)
        elif isinstance(value, tuple):  # a short integer array, read
            metadata[key] = (None, len(value))
        else:
            metadata[key] = value
    tensors = [(t.name, t.type, t.shape, t.elements, t.bytes, read.data_offset + t.offset) for t in read.tensors]
    return metadata, tensors, read.alignment


def assert_same_as_gguf(path: Path) -> None:
    theirs, our = values_by_gguf(path), values_by_us(path)
    their_meta, our_meta = theirs[0], our[0]
    # We keep the keys the launcher uses, and every one of them the file has.
    arch = their_meta["general.architecture"]
    used = USED_KEYS | {f"{arch}.{suffix}" for suffix in SHAPE_KEYS}
    assert our_meta.keys() == their_meta.keys() & used and len(our_meta) >= 8
    for key, value in our_meta.items():
        if isinstance(value, tuple) and value[0] is None:
            assert value[1] == their_meta[key][1], key
        elif value is None:  # a string the launcher does not read
            assert isinstance(their_meta[key], str), key
        else:
            assert value == their_meta[key], key
    assert our[1:] == theirs[1:]


@pytest.mark.skipif(not QUICKSTART.exists(), reason="the quick-start model is fetched by "
                                                    "scripts/fetch-quickstart-model.sh")
def test_the_quick_start_model_reads_the_same_as_with_the_gguf_package():
    assert_same_as_gguf(QUICKSTART)
    facts = read_facts(QUICKSTART)
    assert (facts.architecture, facts.context_length, facts.layers, facts.vocab) == ("llama", 8192, 30, 49152)
    assert (facts.parameters, facts.tensor_bytes, facts.quantization) == (134515008, 96576768, "MOSTLY_Q4_1")


def test_a_llama_3_size_tokenizer_reads_the_same_as_with_the_gguf_package(tmp_path):
    path = g.large_vocabulary_gguf(tmp_path / "large.gguf")
    assert_same_as_gguf(path)
    facts = read_facts(path)
    assert (facts.vocab, facts.context_length, facts.kv_heads, facts.quantization) == (128_256, 131_072, 8,
                                                                                      "MOSTLY_Q4_K_M")


def test_a_file_written_by_the_gguf_package_reads_the_same(tmp_path):
    assert_same_as_gguf(tokenized_gguf(tmp_path / "t.gguf"))


def test_the_type_tables_are_ggmls():
    import gguf
    assert {t.value: (t.name, *size) for t, size in gguf.GGML_QUANT_SIZES.items()} == GGML_TYPES
    assert {t.value: t.name for t in gguf.LlamaFileType} == FILE_TYPES


# --- fuzz ------------------------------------------------------------------

def tokenized_gguf(path: Path) -> Path:
    """A small but real GGUF, written by the gguf package: llama metadata, a
    tokenizer (tokens, scores, types, merges), per-layer head counts and
    tensors of several ggml types."""
    import gguf
    import numpy as np
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("fuzz base")
    writer.add_context_length(2048)
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count([4, 8])
    writer.add_head_count_kv(2)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t\u00f6k{i}" for i in range(40)])
    writer.add_token_scores([float(i) for i in range(40)])
    writer.add_token_types([1] * 40)
    writer.add_token_merges([f"t {i}" for i in range(20)])
    writer.add_chat_template("{{ messages }}")
    writer.add_tensor("token_embd.weight", np.arange(64 * 4, dtype=np.float32).reshape(4, 64))
    writer.add_tensor("q", np.zeros((2, 20), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q4_1)
    writer.add_tensor("norm", np.ones(64, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


_BASE: list[bytes] = []


def base_bytes() -> bytes:
    if not _BASE:
        import tempfile
        with tempfile.TemporaryDirectory() as directory:
            _BASE.append(tokenized_gguf(Path(directory) / "base.gguf").read_bytes())
    return _BASE[0]


INTERESTING = [0, 1, 2**7, 2**8 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
mutations = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(1, 255)),
    st.tuples(st.just("u32"), st.integers(0, 2**20), st.sampled_from(INTERESTING).map(lambda v: v % 2**32)),
    st.tuples(st.just("u64"), st.integers(0, 2**20), st.sampled_from(INTERESTING)),
    st.tuples(st.just("cut"), st.integers(0, 2**20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 2**20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 2**20), st.integers(1, 64)),
), min_size=1, max_size=6)


def mutate(data: bytes, steps) -> bytes:
    out = bytearray(data)
    for op, at, value in steps:
        at %= max(len(out), 1)
        if op == "flip" and out:
            out[at] ^= value
        elif op == "u32":
            out[at:at + 4] = struct.pack("<I", value)
        elif op == "u64":
            out[at:at + 8] = struct.pack("<Q", value)
        elif op == "cut":
            del out[at:]
        elif op == "insert":
            out[at:at] = value
        elif op == "delete":
            del out[at:at + value]
    return bytes(out)


def read_within_bounds(data: bytes, directory: Path) -> None:
    """Reads `data` as a model file: facts or our error, nothing else, and
    no more memory than a few times the file."""
    path = directory / "fuzzed.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        facts_of(read_gguf(path), path)
    except GgufError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 4 * 2**20 + 8 * len(data), peak


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(steps=mutations)
def test_fuzz_mutations_of_a_real_file_get_nothing_but_our_error(tmp_path, steps):
    read_within_bounds(mutate(base_bytes(), steps), tmp_path)


kinds = st.integers(0, 14)
values = st.one_of(
    st.builds(g.scalar, st.sampled_from([g.U8, g.I32, g.U32, g.U64, g.I64, g.F32, g.BOOL]), st.just(1)),
    st.builds(lambda n: g.scalar(g.U64, n), st.sampled_from(INTERESTING)),
    st.builds(lambda n: g.scalar(g.I32, n), st.integers(-2**31, 2**31 - 1)),
    st.builds(lambda s: g.scalar(g.STRING, s), st.binary(max_size=40)),
    st.builds(lambda e, n, body: struct.pack("<IIQ", g.ARRAY, e, n) + body, kinds, st.sampled_from(INTERESTING),
              st.binary(max_size=64)),
    st.builds(lambda depth: struct.pack("<I", g.ARRAY) + struct.pack("<IQ", g.ARRAY, 1) * depth
              + struct.pack("<IQB", g.U8, 1, 0), st.integers(1, 3000)),
    st.builds(lambda kind, body: struct.pack("<I", kind) + body, kinds, st.binary(max_size=16)),
)
keys = st.one_of(st.sampled_from(["general.architecture", "general.name", "general.alignment", "general.file_type",
                                  "llama.context_length", "llama.block_count", "llama.embedding_length",
                                  "llama.attention.head_count", "llama.attention.head_count_kv",
                                  "llama.feed_forward_length", "llama.vocab_size", "tokenizer.ggml.tokens",
                                  "tokenizer.chat_template"]), st.binary(max_size=12))
tensors = st.builds(g.tensor_entry, st.one_of(st.sampled_from(["a", "b"]), st.binary(max_size=70)),
                    st.lists(st.sampled_from([0, 1, 16, 32, 256, 2**32, 2**63]), max_size=5),
                    st.sampled_from([0, 1, 2, 3, 12, 4, 99, 2**31]), st.sampled_from([0, 32, 64, 2**63]))


@FUZZ
@given(pairs=st.lists(st.tuples(keys, values), max_size=8), entries=st.lists(tensors, max_size=4),
       data=st.binary(max_size=300), version=st.sampled_from([2, 3, 3, 1, 2**32 - 1]),
       counts=st.sampled_from([None, 0, 1, 2**63, 2**64 - 1]))
def test_fuzz_generated_structures_get_nothing_but_our_error(tmp_path, pairs, entries, data, version, counts):
    read_within_bounds(g.raw_gguf(pairs, entries, data, version=version, kv_count=counts), tmp_path)


def test_an_error_naming_a_hostile_key_is_escaped(tmp_path):
    path = tmp_path / "m.gguf"
    hostile = "\x1b]0;owned\x07\u202e"
    entries, data = g.one_f32_tensor()
    path.write_bytes(g.raw_gguf(g.llama_pairs() + [(hostile, g.scalar(g.U32, 1))] * 2, entries, data))
    result = runner.invoke(app, ["model", "inspect", str(path)])
    assert result.exit_code == 2 and "appears twice" in result.stderr
    assert "\x1b" not in result.output and "\u202e" not in result.output and "\x07" not in result.output


def test_a_fifo_or_a_device_is_refused_without_waiting(tmp_path):
    import os
    os.mkfifo(tmp_path / "pipe.gguf")
    for path in (tmp_path / "pipe.gguf", Path("/dev/zero")):
        with pytest.raises(GgufError, match="not a regular file"):
            read_gguf(path)


def outcome(path: Path):
    try:
        return facts_of(read_gguf(path), path)
    except GgufError as e:
        return str(e)


@FUZZ
@given(chunk=st.integers(1, 300), steps=st.one_of(st.just([]), mutations))
def test_the_window_over_the_file_reads_the_same_whatever_its_size(tmp_path, monkeypatch, chunk, steps):
    # Strings, arrays and tensor entries then fall across every edge of it.
    import launcher.models.gguf_reader as reader
    path = tmp_path / "m.gguf"
    path.write_bytes(mutate(base_bytes(), steps))
    whole = outcome(path)
    monkeypatch.setattr(reader, "_CHUNK", chunk)
    assert outcome(path) == whole
