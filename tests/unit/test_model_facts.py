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
from tests.unit.helpers import policy_for_model

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
    with pytest.raises(GgufError, match="not a readable GGUF file: the header needs 24 bytes"):
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


def test_validate_with_an_unchanged_model_reads_no_metadata(tmp_path, monkeypatch):
    import hashlib
    import json
    import os
    from launcher.models.facts import facts_dir
    monkeypatch.chdir(tmp_path)
    model = make_gguf(tmp_path / "m.gguf", context_length=4096)
    policy_for_model(tmp_path, model, 4096, memory="8g")
    first = runner.invoke(app, ["validate", "--no-port-check", "p.yaml"])
    assert first.exit_code == 0 and "warning" not in first.output, first.output
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    kept = facts_dir() / f"{sha}.json"
    assert os.stat(kept).st_mode & 0o777 == 0o600 and os.stat(facts_dir()).st_mode & 0o777 == 0o700
    # Only the kept facts say 1024: a warning of 1024 shows they were used and
    # the file's metadata (4096) was not read again.
    entry = json.loads(kept.read_text())
    kept.write_text(json.dumps({**entry, "context_length": 1024}))
    second = runner.invoke(app, ["validate", "--no-port-check", "p.yaml"])
    assert second.exit_code == 0 and "more than the 1024 tokens the model was trained for" in second.stderr
    # The control: another model (other bytes, so another sha256) is read.
    make_gguf(model, context_length=2048)
    policy_for_model(tmp_path, model, 4096, memory="8g")
    third = runner.invoke(app, ["validate", "--no-port-check", "p.yaml"])
    assert third.exit_code == 0 and "more than the 2048 tokens the model was trained for" in third.stderr


def test_kept_facts_that_are_broken_are_read_again(tmp_path):
    import hashlib
    from launcher.models.facts import facts_dir, facts_for
    model = make_gguf(tmp_path / "m.gguf", context_length=4096)
    kept = facts_dir() / f"{hashlib.sha256(model.read_bytes()).hexdigest()}.json"
    assert facts_for(model).context_length == 4096 and kept.exists()
    for broken in ('{"reader": 1, "context_length": [1, 2', '[[[[' * 10000, '{"reader": 1, "context_length": "x"}',
                   "x" * 100_000):
        kept.write_text(broken)
        assert facts_for(model) == read_facts(model)


def test_kept_facts_are_bounded(tmp_path):
    import os
    from launcher.models.facts import FACTS_KEPT, facts_dir, remember_facts
    facts = read_facts(make_gguf(tmp_path / "m.gguf"))
    for i in range(FACTS_KEPT + 5):
        remember_facts(f"{i:064x}", facts)
        os.utime(facts_dir() / f"{i:064x}.json", ns=(i * 10**9, i * 10**9))  # written in this order
    kept = sorted(p.stem for p in facts_dir().iterdir())
    assert kept == [f"{i:064x}" for i in range(5, FACTS_KEPT + 5)]


def test_check_gguf_keeps_the_facts_of_the_bytes_it_checked_and_refuses_a_lying_file(tmp_path):
    import hashlib
    from launcher.models.facts import check_gguf, facts_dir
    from tests.support.hostile_gguf import FIXTURES
    model = make_gguf(tmp_path / "m.gguf")
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert check_gguf(model, sha).context_length == 4096 and (facts_dir() / f"{sha}.json").exists()
    # What `model pull` took into the store before: each is refused, nothing kept.
    for name in ("truncated-66-bytes", "unknown-value-type", "version-4294967295", "lying-shapes"):
        lying = tmp_path / f"{name}.gguf"
        lying.write_bytes(FIXTURES[name][0])
        with pytest.raises(GgufError, match=f"{lying}: not a readable GGUF file: "):
            check_gguf(lying, "0" * 64)
    assert not (facts_dir() / f"{'0' * 64}.json").exists()


def test_facts_of_a_missing_model_are_a_clear_error(tmp_path):
    from launcher.models.facts import facts_for
    with pytest.raises(GgufError, match="cannot be read"):
        facts_for(tmp_path / "gone.gguf")


def test_validate_reports_the_facts_of_the_file_it_hashed(tmp_path, monkeypatch):
    # Tried as an attacker would: the policy's model is a link, swapped from
    # the pinned file to another once validate had hashed it; validate said
    # ok and gave the other file's facts.
    import hashlib
    import os
    import launcher.policy.validate as validate
    monkeypatch.chdir(tmp_path)
    pinned = make_gguf(tmp_path / "pinned.gguf", context_length=4096)
    other = make_gguf(tmp_path / "other.gguf", context_length=1024)
    link = tmp_path / "link.gguf"
    link.symlink_to(pinned.name)
    policy_for_model(tmp_path, pinned, 4096, memory="8g")
    (tmp_path / "p.yaml").write_text((tmp_path / "p.yaml").read_text().replace("pinned.gguf", "link.gguf"))
    checked = validate.model_file_problem

    def check_then_swap(*args, **kwargs):
        problem = checked(*args, **kwargs)
        os.replace(tmp_path / "new-link", link) if (tmp_path / "new-link").is_symlink() else None
        return problem

    # The control: unswapped, it is ok with the pinned file's facts.
    monkeypatch.setattr(validate, "model_file_problem", check_then_swap)
    ok = runner.invoke(app, ["validate", "--no-port-check", "p.yaml"])
    assert ok.exit_code == 0 and "1024 tokens" not in ok.output, ok.output
    (tmp_path / "new-link").symlink_to(other.name)
    swapped = runner.invoke(app, ["validate", "--no-port-check", "p.yaml"])
    assert swapped.exit_code == 2, swapped.output
    assert "1024 tokens" not in swapped.output
    sha = hashlib.sha256(pinned.read_bytes()).hexdigest()
    [line] = swapped.stderr.splitlines()
    assert line.startswith("p.yaml:5:11 models[0].path: ") and f"not the {sha} the policy pins" in line


def test_facts_for_a_pinned_sha256_come_from_the_bytes_hashed(tmp_path):
    import hashlib
    from launcher.models.facts import facts_for
    model = make_gguf(tmp_path / "m.gguf", context_length=4096)
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert facts_for(model, sha).context_length == 4096
    make_gguf(model, context_length=1024)  # other bytes at the same path
    with pytest.raises(GgufError, match=f"not the {sha} the policy pins"):
        facts_for(model, sha)


def test_validate_weighs_the_chat_model_with_the_embedding_model_loaded_beside_it(tmp_path, monkeypatch):
    """Each fits backend.memory alone, both do not: the embedding model's own
    server keeps it loaded while the chat model answers. Control: the same two
    as chat models, loaded one at a time, fit."""
    import hashlib
    model = make_gguf(tmp_path / "m.gguf", context_length=1024, layers=30, embedding=576, heads=9, kv_heads=3,
                      vocab=49152)
    one = estimate(read_facts(model), 1024).total
    limit = (one * 3 // 2) // 2**20  # MiB: between one model's need and two models'
    assert one < limit * 2**20 < 2 * one
    sha = hashlib.sha256(model.read_bytes()).hexdigest()

    def validate(second_role: str):
        (tmp_path / "p.yaml").write_text(f"""version: 1
name: both
models:
  - alias: chat
    path: m.gguf
    sha256: {sha}
    context_length: 1024
  - alias: embed
    path: m.gguf
    sha256: {sha}
    context_length: 1024
    role: {second_role}
backend:
  gpu: none
  memory: {limit}m
frontend:
  recipe: open-webui
ingress:
  port: 18099
""")
        result = runner.invoke(app, ["validate", "--no-port-check", "p.yaml"])
        assert result.exit_code == 0, result.output
        return result.stderr

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    [warning] = [line for line in validate("embeddings").splitlines() if "backend.memory" in line]
    assert warning.startswith("p.yaml:15:11 models[0]: warning: with the embedding model (models[1]) loaded beside "
                              "it, needs about"), warning
    assert f"more than backend.memory {limit}m" in warning
    assert "backend.memory" not in validate("chat")
