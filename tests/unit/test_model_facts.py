"""GGUF facts read from the header, the memory estimate, and the warnings
`validate` gives from them."""
import pytest
from typer.testing import CliRunner

from launcher.cli import app
from launcher.models.facts import (
    GgufError,
    Machine,
    context_warning,
    estimate,
    fit_warnings,
    read_facts,
)
from launcher.spec import memory_bytes
from tests.support.gguf_files import make_gguf

runner = CliRunner()


def test_facts_come_from_the_header_without_the_weights(tmp_path):
    path = make_gguf(tmp_path / "m.gguf", context_length=4096, layers=2, embedding=64, heads=4, kv_heads=2,
                     vocab=100, filler=1000)
    facts = read_facts(path)
    assert (facts.architecture, facts.name, facts.context_length, facts.layers) == ("llama", "test model", 4096, 2)
    assert (facts.heads, facts.kv_heads, facts.key_length, facts.vocab) == (4, 2, 16, 100)
    assert facts.parameters == 1016 and facts.quantization == "ALL_F32" and facts.chat_template
    assert facts.tensor_bytes == 1016 * 4


def test_not_a_gguf_file_is_a_clear_error(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(GgufError, match="not a usable GGUF file: the header needs 24 bytes"):
        read_facts(tmp_path / "x.gguf")


def test_the_kv_cache_grows_with_the_context(tmp_path):
    facts = read_facts(make_gguf(tmp_path / "m.gguf", layers=30, embedding=576, heads=9, kv_heads=3))
    small, large = estimate(facts, 2048), estimate(facts, 8192)
    # 30 layers x 3 KV heads x (64 + 64) dims x 2 bytes per token
    assert small.kv_cache == 30 * 2048 * 3 * 128 * 2 and large.kv_cache == 4 * small.kv_cache
    assert large.total > small.total


def test_will_it_fit(tmp_path):
    facts = read_facts(make_gguf(tmp_path / "m.gguf", layers=30, embedding=576, heads=9, kv_heads=3, vocab=49152))
    need = estimate(facts, 8192)
    roomy = Machine(available_ram=64 * 2**30, gpus=())
    assert fit_warnings(need, "8g", roomy, on_gpu=False) == []
    [limit] = fit_warnings(need, "128m", roomy, on_gpu=False)
    assert "more than backend.memory 128m" in limit and "killed for lack of memory" in limit
    [ram] = fit_warnings(need, None, Machine(available_ram=2**20, gpus=()), on_gpu=False)
    assert "more than this machine's free memory" in ram
    [gpu] = fit_warnings(need, None, Machine(None, (("H200", 2**30, 2**20),)), on_gpu=True)
    assert "fit no GPU's free memory" in gpu and "gpu_layers" in gpu
    assert memory_bytes("1.5g") == 1.5 * 2**30 and memory_bytes("512m") == 512 * 2**20


def test_a_context_longer_than_the_training_is_named(tmp_path):
    facts = read_facts(make_gguf(tmp_path / "m.gguf", context_length=2048))
    assert "more than the 2048 tokens the model was trained for" in context_warning(facts, 4096)
    assert context_warning(facts, 2048) is None


def test_validate_warns_with_the_place_and_still_passes(tmp_path, monkeypatch):
    import hashlib
    model = make_gguf(tmp_path / "m.gguf", context_length=1024, layers=30, embedding=576, heads=9, kv_heads=3,
                      vocab=49152)
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    (tmp_path / "p.yaml").write_text(f"""version: 1
name: warned
models:
  - alias: m
    path: m.gguf
    sha256: {sha}
    context_length: 8192
backend:
  gpu: none
  memory: 64m
frontend:
  recipe: chat
ingress:
  port: 18099
""")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = runner.invoke(app, ["validate", "--no-port-check", "p.yaml"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("p.yaml:7:21 models[0].context_length: warning: context_length 8192 is more than the "
                               "1024 tokens")
    assert lines[1].startswith("p.yaml:10:11 models[0]: warning: needs about") and "backend.memory 64m" in lines[1]
