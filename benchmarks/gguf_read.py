"""What reading a model's facts costs: the launcher's GGUF reader against the
gguf package (which the launcher used before, reading the same fields), on
the quick-start model and on a generated file with a Llama-3-size tokenizer
(128,256 tokens, 280,147 merges); the facts kept by sha256, and the
model warnings `validate` and `up` give from them (what both pay for an
unchanged model); and `sandbox validate` of a policy
naming each model, against `validate --no-model-files` of the same policy
(the cost of the launcher without any model). Rounds alternate so that
machine noise falls on all; the files are in the page cache. State and
caches go to a temporary directory.

    python benchmarks/gguf_read.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import MODEL  # noqa: E402
from tests.support.gguf_files import large_vocabulary_gguf  # noqa: E402


def facts_by_gguf(path: Path) -> tuple:
    """The fields the launcher reads, read as it read them with the gguf package."""
    import gguf
    reader = gguf.GGUFReader(str(path), "r")

    def field(key: str):
        found = reader.fields.get(key)
        return found.contents() if found is not None else None

    arch = field("general.architecture")
    return (arch, field("general.name"), gguf.LlamaFileType(field("general.file_type")).name,
            field(f"{arch}.context_length"),
            field(f"{arch}.block_count"), field(f"{arch}.embedding_length"), field(f"{arch}.feed_forward_length"),
            field(f"{arch}.attention.head_count"), field(f"{arch}.attention.head_count_kv"),
            field(f"{arch}.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data),
            field("tokenizer.chat_template") is not None, sum(int(t.n_elements) for t in reader.tensors),
            sum(int(t.n_bytes) for t in reader.tensors))


def facts_by_us(path: Path) -> tuple:
    from launcher.models.facts import read_facts
    f = read_facts(path)
    return (f.architecture, f.name, f.quantization, f.context_length, f.layers, f.embedding, f.feed_forward, f.heads,
            f.kv_heads, f.vocab, f.chat_template, f.parameters, f.tensor_bytes)


def seconds(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def policy_for(directory: Path, model: Path, name: str) -> Path:
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    policy = directory / f"{name}.yaml"
    policy.write_text(f"version: 1\nname: {name}\nmodels:\n  - alias: m\n    path: {model}\n    sha256: {sha}\n"
                      f"    context_length: 2048\nbackend:\n  gpu: none\n  memory: 1g\nfrontend:\n  recipe: chat\n"
                      f"ingress:\n  port: 18099\n")
    return policy


def validate(policy: Path, *extra: str) -> float:
    return seconds(lambda: subprocess.run([sys.executable, "-m", "launcher", "validate", "--no-port-check", *extra,
                                           str(policy)], check=True, capture_output=True, cwd=ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        os.environ.update(SANDBOX_STATE_DIR=str(directory / "state"), XDG_CACHE_HOME=str(directory / "cache"))
        from launcher.commands.model import policy_warnings
        from launcher.models.facts import facts_for
        from launcher.policy import load_policy
        files = {"128k-vocabulary file": large_vocabulary_gguf(directory / "large-vocabulary.gguf")}
        if MODEL.exists():
            files = {"quick-start model": MODEL, **files}
        else:
            print(f"(no {MODEL.name}: scripts/fetch-quickstart-model.sh fetches it)")
        for name, path in files.items():
            assert facts_by_us(path) == facts_by_gguf(path), name
        times: dict[tuple[str, str], list[float]] = {}
        policies = {name: policy_for(directory, path, f"bench{i}") for i, (name, path) in enumerate(files.items())}
        for name, path in files.items():
            facts_for(path)  # hashed and read once: what every later validate and up finds
            validate(policies[name])
        for _ in range(args.rounds):
            for name, path in files.items():
                times.setdefault((name, "gguf"), []).append(seconds(lambda: facts_by_gguf(path)))
                times.setdefault((name, "ours"), []).append(seconds(lambda: facts_by_us(path)))
                times.setdefault((name, "kept"), []).append(seconds(lambda: facts_for(path)))
                policy = load_policy(policies[name], check_port=False)
                times.setdefault((name, "warnings"), []).append(
                    seconds(lambda: policy_warnings(policy, on_gpu=False)))
                times.setdefault((name, "no models"), []).append(validate(policies[name], "--no-model-files"))
                times.setdefault((name, "validate"), []).append(validate(policies[name]))
        median = {key: statistics.median(values) for key, values in times.items()}
        print(f"median of {args.rounds} rounds, seconds")
        print(f"{'file':<22}{'gguf':>10}{'ours':>10}{'gguf/ours':>11}{'kept':>10}{'ours/kept':>11}")
        for name in files:
            gguf_s, ours_s, kept_s = (median[(name, k)] for k in ("gguf", "ours", "kept"))
            print(f"{name:<22}{gguf_s:>10.4f}{ours_s:>10.4f}{gguf_s / ours_s:>10.0f}x{kept_s:>10.5f}"
                  f"{ours_s / kept_s:>10.0f}x")
        print(f"\n{'sandbox validate':<22}{'no models':>10}{'model':>10}{'ratio':>11}{'warnings':>10}")
        for name in files:
            bare, full = median[(name, "no models")], median[(name, "validate")]
            print(f"{name:<22}{bare:>10.3f}{full:>10.3f}{full / bare:>11.2f}{median[(name, 'warnings')]:>10.4f}")


if __name__ == "__main__":
    main()
