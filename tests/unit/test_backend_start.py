"""The backend image's start (images/llama-cpp/backend.py): each model file is
hashed and compared with the policy's sha256 before the server loads it, so a
backend that Docker restarts by itself does not load a file changed on the host
meanwhile. The server itself is not run here: `os.execv` is where it would
start."""
import hashlib
import importlib.util
import json
from pathlib import Path

import anyio
import pytest

spec = importlib.util.spec_from_file_location(
    "backend_entry", Path(__file__).resolve().parents[2] / "images" / "llama-cpp" / "backend.py")
backend = importlib.util.module_from_spec(spec)
spec.loader.exec_module(backend)


@pytest.fixture
def started(tmp_path, monkeypatch):
    """A model file, the configuration that names it with its sha256, and
    what the start did: the server it ran, or how long it paused."""
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"weights" * 1000)
    config = {"host": "0.0.0.0", "port": 8000,
              "models": [{"model": str(model), "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
                          "model_alias": "m", "n_ctx": 2048}]}
    monkeypatch.setenv("SANDBOX_BACKEND_CONFIG", json.dumps(config))
    monkeypatch.setenv("SANDBOX_API_KEY", "key")
    monkeypatch.setattr(backend, "CONFIG_PATH", str(tmp_path / "server.json"))
    did = {}
    monkeypatch.setattr(backend.os, "execv", lambda path, argv: did.setdefault("ran", argv))
    monkeypatch.setattr(backend.time, "sleep", lambda seconds: did.setdefault("paused", seconds))
    return model, tmp_path / "server.json", did


def test_an_unchanged_model_is_loaded_and_the_server_gets_its_own_settings_only(started, capsys):
    model, server_config, did = started
    backend.serve()
    assert did["ran"][-2:] == ["server", str(server_config)] and "paused" not in did
    [entry] = json.loads(server_config.read_text())["models"]
    assert entry["model"] == str(model) and "sha256" not in entry  # llama's settings refuse unknown keys
    assert f"backend: {model}: sha256 checked" in capsys.readouterr().err


def test_a_model_changed_on_the_host_is_refused_and_the_server_never_runs(started, capsys):
    model, server_config, did = started
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF  # one byte, in place: same size, same name
    model.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as exited:
        backend.serve()
    assert exited.value.code == 2 and "ran" not in did and not server_config.exists()
    # It waits before exiting, so that Docker's restarts do not hash a large model without end.
    assert did["paused"] == backend.REFUSED_PAUSE_SECONDS
    err = capsys.readouterr().err
    assert f"backend: refusing to start: {model}: its sha256 is {hashlib.sha256(bytes(data)).hexdigest()}" in err
    assert "changed on the host" in err


def test_a_model_without_a_sha256_or_unreadable_is_refused(started, monkeypatch, tmp_path, capsys):
    model, _, did = started
    config = json.loads(backend.os.environ["SANDBOX_BACKEND_CONFIG"])
    config["models"].append({"model": str(tmp_path / "gone.gguf"), "sha256": "0" * 64, "model_alias": "gone"})
    config["models"].append({"model": str(model), "model_alias": "unchecked"})
    monkeypatch.setenv("SANDBOX_BACKEND_CONFIG", json.dumps(config))
    assert backend.check() == 2
    err = capsys.readouterr().err
    assert f"refusing to start: {tmp_path / 'gone.gguf'}: cannot be read (No such file or directory)" in err
    assert f"refusing to start: {model}: no sha256 was given to check it against" in err
    assert "ran" not in did


@pytest.fixture
def with_embeddings(started, tmp_path, monkeypatch):
    """The configuration with an embedding model too, and the servers the
    start ran (each by its config file) in place of running them."""
    model, server_config, did = started
    embedder = tmp_path / "e.gguf"
    embedder.write_bytes(b"GGUF" + b"vectors" * 1000)
    config = json.loads(backend.os.environ["SANDBOX_BACKEND_CONFIG"])
    config["embeddings"] = {"port": 8001, "model": {
        "model": str(embedder), "sha256": hashlib.sha256(embedder.read_bytes()).hexdigest(),
        "model_alias": "e", "n_ctx": 512, "embedding": True}}
    monkeypatch.setenv("SANDBOX_BACKEND_CONFIG", json.dumps(config))
    monkeypatch.setattr(backend, "EMBEDDINGS_CONFIG_PATH", str(tmp_path / "embeddings.json"))
    monkeypatch.setattr(backend, "run_servers", lambda paths: did.setdefault("servers", paths) and 0)
    # llama.cpp, asked by a process of its own, says the file names no pooling.
    monkeypatch.setattr(backend.subprocess, "run", lambda argv, **kw: did.setdefault("asked", argv) and type(
        "Done", (), {"stdout": json.dumps(["llama.pooling_type=int:1"]).encode()})())
    return embedder, tmp_path / "embeddings.json", did


def test_the_embedding_model_gets_a_server_of_its_own_with_embeddings_on(started, with_embeddings, capsys):
    _, server_config, _ = started
    embedder, embeddings_config, did = with_embeddings
    with pytest.raises(SystemExit):
        backend.serve()
    assert did["servers"] == [str(server_config), str(embeddings_config)] and "ran" not in did
    assert did["asked"][-2:] == ["pooling", str(embedder)]
    chat = json.loads(server_config.read_text())
    assert [m["model_alias"] for m in chat["models"]] == ["m"] and "embeddings" not in chat
    own = json.loads(embeddings_config.read_text())
    assert (own["port"], own["api_key"]) == (8001, "key")  # the same key as the chat server's
    [entry] = own["models"]
    assert entry["model"] == str(embedder) and entry["embedding"] is True and "sha256" not in entry
    assert entry["kv_overrides"] == ["llama.pooling_type=int:1"]
    assert f"backend: {embedder}: sha256 checked" in capsys.readouterr().err


def test_an_embedding_model_changed_on_the_host_is_refused_and_no_server_runs(with_embeddings, capsys):
    embedder, embeddings_config, did = with_embeddings
    embedder.write_bytes(b"GGUF" + b"VECTORS" * 1000)
    with pytest.raises(SystemExit) as exited:
        backend.serve()
    assert exited.value.code == 2 and "servers" not in did and "ran" not in did and not embeddings_config.exists()
    assert f"refusing to start: {embedder}: its sha256 is" in capsys.readouterr().err


def test_when_one_server_ends_the_other_is_stopped_and_the_backend_ends(monkeypatch):
    # Two stand-in servers: one ends at once, the other would run for a minute.
    monkeypatch.setattr(backend, "SERVER", [backend.sys.executable, "-c"])
    started = backend.time.monotonic()
    code = backend.run_servers(["import sys; sys.exit(3)", "import time; time.sleep(60)"])
    assert code == 3 and backend.time.monotonic() - started < 30


@pytest.mark.parametrize("schema, refused", [
    ({"type": "string", "maxLength": 1001}, "maxLength is 1001"),
    ({"type": "array", "items": {"type": "string", "minLength": 10**9}}, "minLength is 1000000000"),
    ({"properties": {"a": {"type": "string", "pattern": "^a{2,5000}$"}}}, "pattern repeats {2,5000}"),
    ({"anyOf": [{"type": "string"}, {"type": "string", "pattern": "(ab){100000}"}]}, "pattern repeats {100000}"),
    # Tried as an attacker would: numbers int() reads, which a digits-only check let by (the server ended).
    ({"type": "string", "pattern": "^a{0,+100000}$"}, "pattern repeats {0,+100000}"),
    ({"type": "string", "pattern": "^a{0,100_000}$"}, "pattern repeats {0,100_000}"),
    ({"type": "string", "pattern": "^a{ 100000 }$"}, "pattern repeats { 100000 }"),
])
def test_a_schema_asking_for_more_repetitions_than_llama_cpp_parses_is_refused(schema, refused):
    assert refused in backend.schema_problem(schema)


def test_a_schema_within_bounds_passes_however_deeply_nested():
    assert backend.schema_problem({"type": "object", "properties": {
        "a": {"type": "string", "maxLength": 1000, "pattern": "^[a-z]{1,20}$"},
        "b": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 10}}}) is None
    deep = {}
    for _ in range(100_000):  # walked without recursion: no RecursionError here
        deep = {"items": deep}
    assert backend.schema_problem(deep) is None


def test_a_grammars_depth_counts_its_groups_not_the_brackets_in_its_strings_classes_or_comments():
    assert backend.grammar_depth(b'root ::= ("a" ("b" ("c")?)?)?') == 3
    assert backend.grammar_depth(b'root ::= "((((" [(((] "\\"(((" x  # (((((\nx ::= ("y")') == 1
    nested = b"root ::= " + b'("a" ' * 100_000 + b")?" * 100_000  # what maxLength 100000 became
    assert backend.grammar_depth(nested) == 100_000 > backend.MAX_GRAMMAR_DEPTH
    allowed = b"root ::= " + b'("a" ' * backend.MAX_REPETITIONS + b")?" * backend.MAX_REPETITIONS
    assert backend.grammar_depth(allowed) <= backend.MAX_GRAMMAR_DEPTH


class Clocks:
    """CPU clocks of threads, moved by the test: each thread's clock is its id."""

    def __init__(self):
        self.readings, self.current = {}, 1

    def read(self, clock):
        return self.readings.setdefault(clock, 0.0)

    def run(self, seconds, thread=None):
        thread = self.current if thread is None else thread
        self.readings[thread] = self.read(thread) + seconds


def test_a_calls_cpu_is_summed_over_its_steps_on_any_thread_less_the_models_decode():
    clocks = Clocks()
    call = backend.CallCpu(read=clocks.read, clock_of=lambda: clocks.current)
    clocks.run(100)  # before the call: not counted
    call.begin_step()
    clocks.run(2)
    call.begin_decode()
    clocks.run(50)  # the model's decode: not counted, whether it has ended or not
    assert call.used() == 2
    call.end_decode()
    clocks.run(3)
    call.end_step()
    clocks.run(1000)  # between steps (the server's own, or another call's): not counted
    assert call.used() == 5
    clocks.current = 2  # a streamed call's next chunk, on another of the server's threads
    clocks.run(7)
    call.begin_step()
    clocks.run(4)  # read while the step runs, as the watcher reads it
    assert call.used() == 9
    call.begin_decode()
    clocks.run(1)
    call.end_decode()
    call.end_step()
    assert call.used() == 9


def test_a_calls_work_before_its_first_chunk_counts_and_a_step_within_a_step_counts_once():
    """The chat template runs in the wrapped method before any chunk (a
    1 MiB body of empty messages took it 16 s); the completion's own
    generator runs within the chat format's, a step within a step."""
    clocks, steps = Clocks(), backend.Steps()
    call = backend.CallCpu(read=clocks.read, clock_of=lambda: clocks.current)

    def completion():
        clocks.run(1)
        yield "a"
        clocks.run(2)
        yield "b"

    def chat(stream: bool):
        clocks.run(16)  # the template
        chunks = steps.stepped(steps.current(), completion())
        return chunks if stream else list(chunks)
    with steps.of(call):
        answer = chat(stream=False)
    assert answer == ["a", "b"] and call.used() == 19 and steps.calls() == []

    call = backend.CallCpu(read=clocks.read, clock_of=lambda: clocks.current)
    with steps.of(call):
        chunks = chat(stream=True)
    assert call.used() == 16
    clocks.run(1000)  # the server's, between chunks
    assert list(steps.stepped(call, chunks)) == ["a", "b"]
    assert call.used() == 19 and steps.calls() == []



@pytest.mark.parametrize("schema, refused", [
    # Tried as an attacker would: each within the bound, 60,000 of them became a grammar of some 600 MB as it was
    # built, and the server was killed for its memory (OOMKilled) before any check of the grammar.
    ({"type": "string", "pattern": "^" + ".{0,1000}" * 60_000 + "$"}, "over 10000 repetitions in all"),
    ({"type": "array", "items": [{"type": "string", "maxLength": 1000}] * 11}, "over 10000 repetitions in all"),
    # Tried as an attacker would: 27,000 properties whose names come out alike held the converter for 111 s.
    ({"type": "object", "properties": {f"!{i}": {"const": i} for i in range(27_000)}}, "over 1000 properties in all"),
    ({"type": "object", "properties": {f"p{i}": {"type": "object", "properties": {f"q{j}": {} for j in range(40)}}
                                      for i in range(30)}}, "over 1000 properties in all"),
])
def test_a_schema_asking_for_too_much_in_all_is_refused(schema, refused):
    assert backend.schema_problem(schema) == refused


def test_a_schema_at_the_bounds_in_all_passes():
    assert backend.schema_problem({"type": "string", "pattern": "^" + ".{0,1000}" * 10 + "$"}) is None
    assert backend.schema_problem({"type": "object", "properties": {f"p{i}": {} for i in range(1000)}}) is None


class Reader:
    """The stream to a stream's reader: takes each chunk at once, or never."""

    def __init__(self, takes: bool):
        self.takes, self.taken = takes, []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return None

    async def send(self, item):
        if not self.takes:
            await anyio.sleep_forever()
        self.taken.append(item)


def sent(reader: Reader, chunks: int, seconds: float) -> str:
    async def sending():
        async with backend.ReaderWaited(reader, seconds) as stream:
            try:
                for chunk in range(chunks):
                    await stream.send(chunk)
            except anyio.get_cancelled_exc_class():
                return "ended"
        return "sent"
    return anyio.run(sending)


def test_a_stream_whose_reader_takes_nothing_is_ended_once_it_has_waited_its_bound():
    """Tried as an attacker would: a client that read a few bytes of a long
    stream now and then held the model, and every chat of the UI, for as
    long as it liked (the server lets the model go only once the stream's
    last chunk is taken). The wait is bounded in all; a reader that never
    takes anything is the case held here."""
    assert sent(Reader(takes=False), chunks=3, seconds=0.5) == "ended"


def test_a_stream_whose_reader_takes_its_chunks_is_sent_whole():
    reader = Reader(takes=True)
    assert sent(reader, chunks=1000, seconds=60) == "sent" and reader.taken == list(range(1000))


@pytest.mark.parametrize("kwargs, refused", [
    ({"stop": ["ac"] * 65}, "too_many_stop_strings"),
    ({"stop": ["ac"] * 64}, None),
    ({"logprobs": 1}, "logprobs"),
    ({"logprobs": 0}, "logprobs"),  # a completion's 0 still asks for the chosen token's
    ({"logprobs": True, "top_logprobs": 1}, "logprobs"),
    ({"logprobs": False, "top_logprobs": 5}, None),
    ({"logprobs": None}, None),
    ({"logit_bias": {"1024": -100, "7": 5}}, None),
    ({"logit_bias": {"a<|im_end|>" * 10: 1}}, "logit_bias"),
    ({"logit_bias": {"-1": 1}}, "logit_bias"),
    ({"logit_bias": {"1" * 5000: 1}}, "logit_bias"),  # int() refused it inside the call: 500
    ({"logit_bias": {"\u0661": 1}}, "logit_bias"),  # a decimal digit that is not ASCII
    ({"logit_bias": {"49151": 1}}, None),
    ({"logit_bias": {"49152": 1}}, "logit_bias"),  # past the vocabulary: names no token
    ({}, None),
])
def test_a_call_asking_for_what_the_backend_does_not_serve_is_refused_before_any_work(kwargs, refused):
    found = backend.refusal_of(kwargs, vocabulary=49152)
    kinds = {backend.StopsRefused: "too_many_stop_strings", backend.LogprobsRefused: "logprobs",
             backend.LogitBiasRefused: "logit_bias"}
    assert (kinds[type(found)] if found else None) == refused


def test_each_refusal_is_told_apart_by_its_own_pattern():
    """The server's error handler answers by the first pattern that matches
    a message: a review got `too_many_stop_strings` for a logprobs refusal,
    whose message began as the stop strings' did."""
    refusals = [backend.StopsRefused(65), backend.LogprobsRefused(), backend.LogitBiasRefused(),
                backend.CallOverBudget(), backend.GrammarRefused("x")]
    for refusal in refusals:
        assert [type(other) for other in refusals if str(refusal).startswith(other.PREFIX)] == [type(refusal)]


def test_each_calls_garbage_is_collected_once_it_has_ended():
    """Tried as an attacker would: calls of 30,000 empty messages left some
    32 MiB each in reference cycles Python's collector seldom got to, and
    the server grew until it was killed for its memory. A call's end (an
    answer, an error, a stream's last chunk or its reader gone) has its
    garbage collected, on the collector's own thread."""
    import threading
    collected = threading.Semaphore(0)
    collector = backend.Collector(collect=collected.release)
    collector.call_ended()
    assert collected.acquire(timeout=10)

    def chunks():
        yield 1
        yield 2
        return "done"
    stream = collector.after(chunks())
    assert next(stream) == 1 and not collected.acquire(timeout=0.2)  # not while the stream goes on
    assert list(stream) == [2]
    assert collected.acquire(timeout=10)
    left = collector.after(chunks())
    next(left)
    left.close()  # the reader went away
    assert collected.acquire(timeout=10)


@pytest.mark.parametrize("body, values", [
    ({}, 1), ([], 1), ("text", 0), (None, 0),
    ({"a": 1, "b": [1, 2, 3]}, 1 + 1 + 1 + 2),  # the object, its comma, the array, its two commas
    ({"messages": [{"role": "user", "content": "{[,"}] * 3}, 1 + 1 + 3 * 2 + 2),
])
def test_a_bodys_values_are_counted_as_the_ingress_counts_them(body, values):
    """The ingress counts {, [ and , outside strings (images/ingress/sandbox.js)."""
    assert backend.values_in(body, 100) == values
    text = json.dumps(body, separators=(",", ":"))
    outside = "".join(text.split('"')[::2])  # no escaped quotes in these
    assert sum(outside.count(mark) for mark in "{[,") == values


def test_counting_stops_once_past_the_bound_however_large_the_body():
    # A container's items are counted at once, and nothing inside it once past.
    assert backend.values_in([{}] * 349000, 16384) == 349000
    assert backend.values_in({"a": [[{}] * 10] * 10000, "b": [[]] * 10 ** 6}, 100) in (2 + 10000, 2 + 10 ** 6)
    deep = []
    for _ in range(100000):  # deeper than Python's recursion would go
        deep = [deep]
    assert backend.values_in(deep, 10 ** 6) == 100001


def test_a_validation_is_told_in_a_line_without_the_input():
    problems = [{"loc": ("body", "messages", i, "role"), "msg": "Input should be 'user'", "input": {"role": "x" * 999}}
                for i in range(60000)]
    told = backend.brief_problems(problems)
    assert len(told) < 1000 and "x" * 10 not in told
    assert "body.messages.0.role: Input should be 'user'" in told and "(and 59997 more)" in told
