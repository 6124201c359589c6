"""Entry point of the backend image.

`serve` checks that every model file it is about to load has the sha256 the
policy gives, refusing to start otherwise: Docker restarts a backend by itself
(a crash, an engine restart) and mounts the file again, which may have changed
on the host meanwhile. It then writes the server configuration the launcher
passes in SANDBOX_BACKEND_CONFIG (JSON: host, port, models with their sha256,
...) with the API key from SANDBOX_API_KEY to the tmpfs, and runs
llama-cpp-python's server on it: one config file serves several models.
With an embedding model (the config's `embeddings`: its port and model), a
second server serves it alone, with embeddings on, so that documents never
make the chat model reload (the server keeps one model loaded); both run
under this process, and when either ends the other is stopped and the
container ends, for Docker to restart it whole.
`check` is the check alone; `pooling PATH`, the settings the embedding
model needs to give one vector per text.
`server CONFIG` is llama-cpp-python's server with its grammars guarded (see
guard_grammars), each call's CPU budgeted (see budget_calls) and a stream's
wait for its reader bounded (see bound_reader_waits). `health`
answers whether the servers answer: each loads its model before it
listens, so an answer means the model is loaded. It asks the API's schema, a
route that does not wait for the model: a check that queued behind a long
answer would call a busy backend unhealthy (and, with the server's
interrupt_requests on, it used to cut that answer short).
"""
import contextlib
import contextvars
import ctypes
import gc
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

CONFIG_PATH = "/tmp/llama-cpp-config.json"
EMBEDDINGS_CONFIG_PATH = "/tmp/llama-cpp-embeddings.json"
SERVER = [sys.executable, os.path.abspath(__file__), "server"]
# The most repetitions a JSON schema a request sends (`response_format`,
# `tools`) may ask for, in minItems/maxItems/minLength/maxLength or a
# pattern's {m,n}: llama-cpp-python writes each out in the grammar, and
# "at most n" as n nested groups, which llama.cpp's parser descends one
# stack frame each (maxLength 100000 ended the server). llama.cpp's own
# grammar syntax stops at 2000 repetitions.
MAX_REPETITIONS = 1000
# The most repetitions a schema may ask for in all (each written out in the
# grammar, some ten characters each): a pattern of 60,000 ".{0,1000}", each
# within the bound above, became a grammar of some 600 MB as it was built,
# and the server was killed for its memory before any check of the grammar.
MAX_TOTAL_REPETITIONS = 10 * MAX_REPETITIONS
# The most properties a schema may name in all: the converter looks for a
# free rule name past every rule made so far, so names that come out alike
# (27,000 properties named with punctuation) took it minutes of CPU, before
# any token, holding the model.
MAX_SCHEMA_PROPERTIES = 1000
# The longest grammar llama.cpp is given to parse (a request's body is at
# most 1 MiB; its grammar grows from the schema's repetitions).
MAX_GRAMMAR_CHARACTERS = 4 * 1024 * 1024
# The deepest its groups may nest: a schema within MAX_REPETITIONS nests
# them about as deep; whatever way a request finds past the schema's check
# (llama-cpp-python's converter and its chat formats are large), llama.cpp's
# parser is not given a grammar deep enough to end it.
MAX_GRAMMAR_DEPTH = 2 * MAX_REPETITIONS
# The most CPU time one completion call may use outside the model's decode
# (llama_decode: the model's own work, which a longer answer or a larger
# model takes more of, is not counted): following its grammar, checking its
# stop strings, the server's own Python. llama.cpp's grammar sampler follows
# every way the answer so far can be read; a pattern that can be read in
# very many ways ("^(a{0,1000}){0,1000}$", within every bound above) held one
# token for hours, and one tuned to 8-15 s a token ("^(a{0,20}){55}a{1000}$")
# held the model, and every chat of the UI, for as long as its 2,048 tokens
# took. No check of a schema tells all such patterns apart, so the call is
# bounded instead: summed over the whole call, from its start (the chat
# template and the prompt's tokens, before any token, count too) through
# each of its chunks (a streamed call's run on whichever of the server's
# threads), and past it, the call is ended before its next token and the
# server goes on. CPU time, not time on the
# clock: a loaded machine, or a server stopped by a signal, does not count.
# An answer of 2,003 tokens (the most its context leaves) under a JSON
# schema with 4 stop strings used 15 s of it on the quick-start model, plain
# text 2 s (docs/benchmarks.md).
CALL_CPU_SECONDS = 60
# How far past CALL_CPU_SECONDS one token may take a call: a single call
# into llama.cpp cannot be stopped from Python, so a call that passes both
# ends the server instead, as a crash would (exit 70), and Docker restarts
# the backend. Without this margin a call whose tokens each take seconds
# would nearly always pass its budget inside a token, and the server would
# restart where the call alone could have been ended.
TOKEN_OVERRUN_CPU_SECONDS = 30
# The longest a streamed call may wait, in all, for its reader to take its
# chunks: the server holds the model until the stream's last chunk is taken,
# so a client that read a few bytes now and then (never idle long enough for
# the ingress's send_timeout) held it, and every chat of the UI, for as long
# as it liked once the answer outgrew the buffers between them. Time on the
# clock: the reader's, not the server's, CPU.
READER_WAIT_SECONDS = 60
# The most stop strings a call may give: each is looked for in the answer
# after every token, in Python (170,000 of them took 0.6 s a token). OpenAI
# takes 4; Open WebUI passes on those its user sets, so this is generous.
MAX_STOP_STRINGS = 64
# The most values a request's body may hold: its objects and arrays, and
# one more for each item after the first in each (the ingress reckons API
# bodies the same way, before it parses them). Tried as an attacker would:
# 60,000 messages of an unknown role (900 KB) had the server validate each
# against every kind of message and write every failure, each with its
# input, into one error of some 115 MB: the backend was killed for its
# memory, in a loop as often as the call was sent. A chat of 5,000
# messages, or a thousand tools, is well within it.
MAX_BODY_VALUES = 16384
# The most bytes a request's body may hold. The ingress bounds the API's
# bodies at 1 MiB; the UI reaches the server directly, and its chats may be
# longer. Tried as an attacker would, as the UI: one request of 900 MiB of
# spaces was read whole into memory and the backend was killed for it (its
# 1 GiB), the model gone for the API's clients too, as often as it was sent.
MAX_BODY_BYTES = 4 * 2**20
# How often a call waiting for the model looks whether its client is still
# there: one whose client has gone is dropped (see drop_calls_whose_client_left).
CLIENT_POLL_SECONDS = 1
# The most problems of a request's validation an answer names.
PROBLEMS_NAMED = 3
# How long a server is given to end on SIGTERM before it is killed.
STOP_SECONDS = 10
CHUNK = 4 * 1024 * 1024
# Docker restarts a container at once when it ran for more than 10 s, so a
# model that takes longer to hash would be hashed again and again, a core busy
# for nothing: a refusal waits this long before it exits.
REFUSED_PAUSE_SECONDS = 60


def load_config() -> dict:
    config = json.loads(os.environ["SANDBOX_BACKEND_CONFIG"])
    config["api_key"] = os.environ["SANDBOX_API_KEY"]
    return config


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def served_models(config: dict) -> list[dict]:
    """Every model the servers load: the chat models and the embedding model."""
    embeddings = config.get("embeddings")
    return config["models"] + ([embeddings["model"]] if embeddings else [])


def model_problems(config: dict) -> list[str]:
    """What is wrong with the model files, each checked against its sha256;
    the checks that passed are said on stderr as they finish."""
    problems = []
    for model in served_models(config):
        path, expected = model["model"], model.get("sha256")
        if not expected:
            problems.append(f"{path}: no sha256 was given to check it against")
            continue
        started = time.monotonic()
        try:
            actual = sha256_of(path)
        except OSError as e:
            problems.append(f"{path}: cannot be read ({e.strerror})")
            continue
        if actual != expected:
            problems.append(f"{path}: its sha256 is {actual}, the policy's is {expected}: "
                            f"the file changed on the host since the sandbox was started")
        else:
            print(f"backend: {path}: sha256 checked ({os.path.getsize(path) / 2**20:.0f} MiB in "
                  f"{time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
    return problems


def refuse(problems: list[str]) -> None:
    for problem in problems:
        print(f"backend: refusing to start: {problem}", file=sys.stderr, flush=True)


def meta_value(model, key: str) -> str | None:
    import llama_cpp
    buffer = ctypes.create_string_buffer(256)
    length = llama_cpp.llama_model_meta_val_str(model, key.encode(), buffer, len(buffer))
    return buffer.value.decode(errors="replace") if length >= 0 else None


def pooling_overrides(path: str) -> list[str]:
    """A model whose file names no pooling (a chat model's) gives a vector
    per token; pooled by their mean, it gives one per text, as an embedding
    model does. Read by llama.cpp's own reader, without the weights."""
    import llama_cpp
    # Its loader's report of every key would fill the log; errors still show.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    if not model:
        return []  # the server says why when it loads it
    try:
        architecture = meta_value(model, "general.architecture")
        if not architecture or meta_value(model, f"{architecture}.pooling_type") is not None:
            return []
        return [f"{architecture}.pooling_type=int:{llama_cpp.LLAMA_POOLING_TYPE_MEAN}"]
    finally:
        llama_cpp.llama_model_free(model)


def write_server_configs(config: dict) -> list[str]:
    """The servers' config files, each with the settings the server knows
    only; the path of each, the chat server's first."""
    for model in served_models(config):
        del model["sha256"]  # the server's settings allow no key it does not know
    embeddings = config.pop("embeddings", None)
    with open(CONFIG_PATH, "w") as f:
        json.dump(config, f)
    if not embeddings:
        return [CONFIG_PATH]
    model = embeddings["model"]
    # Asked of a short-lived process: llama.cpp loaded here would stay in
    # this one's memory for the container's life.
    asked = subprocess.run([sys.executable, os.path.abspath(__file__), "pooling", model["model"]],
                           stdout=subprocess.PIPE, check=True)
    overrides = json.loads(asked.stdout)
    if overrides:
        model["kv_overrides"] = overrides
    with open(EMBEDDINGS_CONFIG_PATH, "w") as f:
        json.dump({**config, "port": embeddings["port"], "models": [model]}, f)
    return [CONFIG_PATH, EMBEDDINGS_CONFIG_PATH]


def run_servers(config_paths: list[str]) -> int:
    """Each server, until one ends (or this process is told to stop): then
    the others are stopped too; the first one's exit status."""
    servers = [subprocess.Popen(SERVER + [path]) for path in config_paths]

    def stop(signum, frame):
        for server in servers:
            if server.poll() is None:
                server.terminate()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pid, status = os.wait()
    ended = next(server for server in servers if server.pid == pid)
    print(f"backend: the server on {config_paths[servers.index(ended)]} ended "
          f"(status {os.waitstatus_to_exitcode(status)}); stopping the others", file=sys.stderr, flush=True)
    ended.returncode = os.waitstatus_to_exitcode(status)
    stop(None, None)
    for server in servers:
        try:
            server.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return ended.returncode


def serve() -> None:
    config = load_config()
    problems = model_problems(config)
    if problems:
        refuse(problems)
        time.sleep(REFUSED_PAUSE_SECONDS)
        sys.exit(2)
    paths = write_server_configs(config)
    if len(paths) == 1:
        os.execv(sys.executable, SERVER + paths)
    else:
        code = run_servers(paths)
        sys.exit(code if code >= 0 else 128 - code)  # killed by a signal: 128 + its number, as a shell says


REPETITION_KEYWORDS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
QUANTIFIER = re.compile(r"\{([^}]*)\}")


def quantifier_numbers(quantifier: str) -> list[int]:
    """The numbers of a pattern's {m,n}, read as the converter reads them:
    by int(), which takes "+100000" and "100_000" too (a check that took
    digits only let those by, and the server ended)."""
    numbers = []
    for part in quantifier.split(","):
        try:
            numbers.append(int(part))
        except ValueError:
            pass  # the converter refuses it itself
    return numbers


def grammar_depth(grammar: bytes) -> int:
    """How deeply a GBNF grammar's groups nest, outside its strings, its
    character classes and its comments: llama.cpp's parser descends a stack
    frame for each."""
    depth = deepest = 0
    i, n = 0, len(grammar)
    while i < n:
        c = grammar[i]
        if c in b'"[':
            close = b'"' if c == ord('"') else b"]"
            i += 1
            while i < n and grammar[i] != close[0]:
                i += 2 if grammar[i] == ord("\\") else 1
        elif c == ord("#"):
            while i < n and grammar[i] != ord("\n"):
                i += 1
        elif c == ord("("):
            depth += 1
            deepest = max(deepest, depth)
        elif c == ord(")"):
            depth -= 1
        i += 1
    return deepest


def schema_problem(schema) -> str | None:
    """Why a JSON schema a request sent may not become a grammar, or None:
    a repetition past MAX_REPETITIONS, repetitions past MAX_TOTAL_REPETITIONS
    in all, or properties past MAX_SCHEMA_PROPERTIES, each of which would
    cost the converter (not yet llama.cpp) memory or time beyond the call's
    bounds. Walked without recursion: a deeply nested schema must not end
    this process either (the converter's own recursion ends in a
    RecursionError, which the server answers)."""
    stack = [schema]
    repetitions = properties = 0
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                asked = []  # (what is asked, how many times)
                if key in REPETITION_KEYWORDS and isinstance(value, (int, float)):
                    asked = [(f"{key} is {value}", value)]
                elif key == "pattern" and isinstance(value, str):
                    asked = [(f"pattern repeats {{{quantifier}}}", max(quantifier_numbers(quantifier), default=0))
                             for quantifier in QUANTIFIER.findall(value)]
                elif key == "properties" and isinstance(value, dict):
                    properties += len(value)
                    if properties > MAX_SCHEMA_PROPERTIES:
                        return f"over {MAX_SCHEMA_PROPERTIES} properties in all"
                for what, times in asked:
                    if times > MAX_REPETITIONS:
                        return f"{what}: at most {MAX_REPETITIONS} repetitions"
                    repetitions += max(times, 0)
                if repetitions > MAX_TOTAL_REPETITIONS:
                    return f"over {MAX_TOTAL_REPETITIONS} repetitions in all"
                stack.append(value)
    return None


class GrammarRefused(ValueError):
    """A request's grammar (its JSON schema, or the grammar itself) that
    llama.cpp would not survive or cannot parse."""
    PREFIX = "refused as a grammar: "

    def __init__(self, why: str):
        super().__init__(self.PREFIX + why)


def guard_grammars() -> None:
    """Every grammar a request makes (from `response_format`, `tools`,
    `functions`, llama.cpp's `grammar`) is checked before and after
    llama.cpp parses it, in this process, before the server starts.
    llama-cpp-python 0.3 hands llama.cpp a grammar it cannot parse and
    uses the NULL it gets back: a schema with `"pattern": "^\\q$"` ended
    the server process (SIGSEGV), and with it every chat. Now the request is
    answered 400 and the server goes on. Where both run, the ingress takes
    `grammar` out of API bodies as well; this covers the UI's routes too."""
    import llama_cpp.llama_cpp as library
    from llama_cpp import llama_grammar
    from llama_cpp.server.errors import ErrorResponse, RouteErrorHandler

    convert = llama_grammar.json_schema_to_gbnf

    def checked_conversion(schema: str, *args, **kwargs) -> str:
        try:
            problem = schema_problem(json.loads(schema))
        except ValueError:
            problem = None  # the converter says what is wrong
        # Not raised here: the chat formats catch a failed conversion and
        # constrain the answer to any JSON instead, dropping the caller's
        # schema without a word. The refusal travels as the grammar and is
        # raised where llama.cpp would be given it.
        return GrammarRefused.PREFIX + problem if problem else convert(schema, *args, **kwargs)
    # Looked up by name at each call, by LlamaGrammar.from_json_schema and the chat formats alike.
    llama_grammar.json_schema_to_gbnf = checked_conversion

    def checked_parse(name: str):
        parse = getattr(library, name)

        def checked(vocab, grammar: bytes, *args):
            if grammar.startswith(GrammarRefused.PREFIX.encode()):
                raise GrammarRefused(grammar.decode()[len(GrammarRefused.PREFIX):])
            if len(grammar) > MAX_GRAMMAR_CHARACTERS:
                raise GrammarRefused(f"{len(grammar)} characters, at most {MAX_GRAMMAR_CHARACTERS}")
            if (depth := grammar_depth(grammar)) > MAX_GRAMMAR_DEPTH:
                raise GrammarRefused(f"its groups nest {depth} deep, at most {MAX_GRAMMAR_DEPTH}")
            sampler = parse(vocab, grammar, *args)
            if not sampler:  # llama.cpp's "error parsing grammar" (said on stderr)
                raise GrammarRefused("llama.cpp cannot parse it")
            return sampler
        setattr(library, name, checked)
    for name in ("llama_sampler_init_grammar", "llama_sampler_init_grammar_lazy_patterns",
                 "llama_sampler_init_grammar_lazy"):
        if hasattr(library, name):
            checked_parse(name)

    def refused(body, match):
        return 400, ErrorResponse(message=match.string, type="invalid_request_error", param="response_format",
                                  code=None)
    # The server's own error handler answers by the message: this one is the client's mistake, not a 500.
    RouteErrorHandler.pattern_and_formatters[re.compile(re.escape(GrammarRefused.PREFIX))] = refused


class StopsRefused(ValueError):
    PREFIX = "refused: "

    def __init__(self, count: int):
        super().__init__(f"{self.PREFIX}{count} stop strings, at most {MAX_STOP_STRINGS}")


class LogprobsRefused(ValueError):
    """Logprobs need the logits of every position of the context, which the
    server does not keep (logits_all off: kept, they cost the context times
    the vocabulary in memory, and a long prompt's had the server killed)."""
    # Told apart from the others by the server's error handler, which answers
    # by the first pattern that matches a message: no prefix of another's.
    PREFIX = "logprobs are not served"

    def __init__(self):
        super().__init__(f"{self.PREFIX} by this backend")


class LogitBiasRefused(ValueError):
    """`logit_bias` maps token ids (OpenAI's form) to a bias. Text keys
    (llama-cpp-python's `logit_bias_type: tokens`) are turned into tokens
    on the server's event loop, before the call's budget: one key of 1 MiB
    of special tokens froze the whole server for over a minute."""
    PREFIX = "logit_bias keys must be token ids"
    # (A key of 5,000 digits passed for an id, and Python's int() refused
    # it inside the call: 500.)

    def __init__(self):
        super().__init__(self.PREFIX)


class CallOverBudget(RuntimeError):
    PREFIX = "ended: the call used its "

    def __init__(self):
        super().__init__(f"{self.PREFIX}{CALL_CPU_SECONDS} s of CPU outside the model (its chat template, "
                         f"following its grammar, its logprobs, checking its stop strings)")


def refusal_of(kwargs: dict, vocabulary: int | None = None) -> ValueError | None:
    """Why a completion call (the keywords the server's routes give) is
    refused before any work, or None. `vocabulary`: the model's number of
    tokens, where known (a `logit_bias` key past it names no token)."""
    # The client's own stop strings (a chat format adds its own later).
    stop = kwargs.get("stop")
    if isinstance(stop, list) and len(stop) > MAX_STOP_STRINGS:
        return StopsRefused(len(stop))
    # A completion's count (0 included), or a chat's yes (its top_logprobs is the count).
    if kwargs.get("logprobs") is not None and kwargs.get("logprobs") is not False:
        return LogprobsRefused()
    for key in kwargs.get("logit_bias") or {}:
        key = str(key)
        if not (key.isascii() and key.isdecimal() and len(key) <= 10) \
                or (vocabulary is not None and int(key) >= vocabulary):
            return LogitBiasRefused()
    return None


def thread_cpu_clock() -> int:
    return time.pthread_getcpuclockid(threading.get_ident())


class CallCpu:
    """The CPU one completion call has used outside the model's decode, over
    its steps (each a next() of its generator, on whichever thread runs it):
    each step's CPU on its thread's clock, less the decodes within it.
    Read by the watcher thread while a step runs, hence the lock."""

    def __init__(self, read=time.clock_gettime, clock_of=thread_cpu_clock):
        self.read, self.clock_of = read, clock_of
        self.lock = threading.Lock()
        self.spent = 0.0  # in its finished steps
        self.step: tuple[int, float] | None = None  # the running step: its thread's clock, and its reading then
        self.decoded = 0.0  # in the running step's finished decodes
        self.decoding: float | None = None  # the clock's reading as the running decode began

    def _used(self) -> float:
        if self.step is None:
            return self.spent
        clock, started = self.step
        now = self.read(clock)
        decoding = now - self.decoding if self.decoding is not None else 0.0
        return self.spent + (now - started) - self.decoded - decoding

    def used(self) -> float:
        with self.lock:
            return self._used()

    def begin_step(self) -> None:
        clock = self.clock_of()
        with self.lock:
            self.step, self.decoded = (clock, self.read(clock)), 0.0

    def end_step(self) -> None:
        with self.lock:
            self.spent, self.step = self._used(), None

    def begin_decode(self) -> None:
        with self.lock:
            self.decoding = self.read(self.step[0])

    def end_decode(self) -> None:
        with self.lock:
            self.decoded += self.read(self.step[0]) - self.decoding
            self.decoding = None


class Steps:
    """Which call each of the server's threads is running a step of. A
    call's steps: the wrapped method's own work before it returns (the chat
    template, the prompt's tokens: a 1 MiB body of 30,000 empty messages
    took the template 16 s) and then each next() of the chunks it returns,
    on whichever thread. A step within a step of the same call (the
    completion's own generator, run inside the chat format's) is counted
    once, by the outer."""

    def __init__(self):
        self.running: dict[int, CallCpu] = {}

    def current(self) -> CallCpu | None:
        return self.running.get(threading.get_ident())

    def calls(self) -> list[CallCpu]:
        return list(self.running.values())

    @contextlib.contextmanager
    def of(self, call: CallCpu):
        thread = threading.get_ident()
        if self.running.get(thread) is call:
            yield
            return
        self.running[thread] = call
        call.begin_step()
        try:
            yield
        finally:
            call.end_step()
            del self.running[thread]

    def stepped(self, call: CallCpu, chunks):
        """The chunks, each made in a step of the call."""
        try:
            while True:
                with self.of(call):
                    try:
                        chunk = next(chunks)
                    except StopIteration as done:
                        return done.value
                yield chunk
        finally:
            chunks.close()


class Collector:
    """Each completion call's garbage collected once the call has ended, on
    a thread of its own (off the answer's path). Tried as an attacker would:
    calls of 30,000 empty messages (each refused for the context's length)
    left some 32 MiB each in reference cycles that Python's collector, which
    counts objects and not their bytes, seldom got to: the server's memory
    grew with every call until it was killed for it, in a loop. Collected
    after each call, it stays where the first calls leave it."""

    def __init__(self, collect=gc.collect):
        self.ended = threading.Event()
        self.collect = collect
        threading.Thread(target=self._run, name="call-garbage", daemon=True).start()

    def call_ended(self) -> None:
        self.ended.set()

    def _run(self) -> None:
        while True:
            self.ended.wait()
            self.ended.clear()
            self.collect()

    def after(self, chunks):
        """The chunks of a stream, the call ended when they are."""
        try:
            return (yield from chunks)
        finally:
            self.call_ended()


def budget_calls() -> None:
    """Every completion call is given CALL_CPU_SECONDS of CPU outside the
    model's decode, and at most MAX_STOP_STRINGS stop strings, no logprobs
    and `logit_bias` by token id only; past any of these it is answered 400
    through the server's error handler (a stream, already
    answered 200, ends with the error as its last event) and the server goes
    on. A call that passes its budget inside one token by
    TOKEN_OVERRUN_CPU_SECONDS ends this process (exit 70), said on stderr."""
    import llama_cpp.llama_cpp as library
    from llama_cpp import Llama
    from llama_cpp.server.errors import ErrorResponse, RouteErrorHandler
    # The server runs one call at a time per model, but a streamed call's
    # steps move between its threads.
    steps = Steps()
    collector = Collector()

    create = Llama._create_completion

    def budgeted(self, *args, **kwargs):
        # Within a server's call, a step of it; called otherwise, a call of its own.
        return steps.stepped(steps.current() or CallCpu(), create(self, *args, **kwargs))
    # Looked up on the class by create_completion at each call.
    Llama._create_completion = budgeted

    decode = library.llama_decode

    def timed_decode(*args):
        call = steps.current()
        if call is None:  # an embedding's
            return decode(*args)
        call.begin_decode()
        try:
            return decode(*args)
        finally:
            call.end_decode()
    library.llama_decode = timed_decode

    sample = library.llama_sampler_sample

    def checked_sample(*args):
        # Each token's sampling begins here: the call, between two tokens, is
        # ended with an exception that leaves the model as after any answer.
        call = steps.current()
        if call is not None and call.used() > CALL_CPU_SECONDS:
            print(f"backend: a call used its {CALL_CPU_SECONDS} s of CPU outside the model: ended",
                  file=sys.stderr, flush=True)
            raise CallOverBudget()
        return sample(*args)
    library.llama_sampler_sample = checked_sample

    # 400, not 429 or 5xx: the openai SDK retries those by itself, and each
    # retry would hold the model as long again.
    errors = {StopsRefused: ("stop", "too_many_stop_strings"), CallOverBudget: (None, "call_cpu_budget"),
              LogprobsRefused: ("logprobs", "logprobs_not_served"), LogitBiasRefused: ("logit_bias", "logit_bias")}

    def error_of(message: str, kind: type) -> ErrorResponse:
        param, code = errors[kind]
        return ErrorResponse(message=message, type="invalid_request_error", param=param, code=code)
    for kind in errors:
        RouteErrorHandler.pattern_and_formatters[re.compile("^" + re.escape(kind.PREFIX))] = (
            lambda body, match, kind=kind: (400, error_of(match.string, kind)))

    def with_error_event(chunks):
        try:
            yield from chunks
        except tuple(errors) as e:
            # A stream has been answered 200 already: its last event is the
            # error, which OpenAI clients raise (the server sends [DONE] after).
            yield {"error": error_of(str(e), type(e))}

    def raised(error: Exception):
        raise error
        yield

    def refused_or_answered(method):
        def answered(self, *args, **kwargs):
            if refusal := refusal_of(kwargs, self.n_vocab()):
                if kwargs.get("stream"):
                    return with_error_event(raised(refusal))
                raise refusal
            call = steps.current() or CallCpu()
            try:
                with steps.of(call):  # the chat template, counted before the first token
                    answer = method(self, *args, **kwargs)
            except BaseException:
                collector.call_ended()
                raise
            if isinstance(answer, dict):
                collector.call_ended()
                return answer
            return collector.after(with_error_event(steps.stepped(call, answer)))
        return answered
    # What the server's routes call, with keywords, looked up on the class at
    # each call (not create_completion: the chat formats read its chunks).
    for name in ("__call__", "create_chat_completion"):
        setattr(Llama, name, refused_or_answered(getattr(Llama, name)))

    def watch() -> None:
        while True:
            time.sleep(1)
            for call in steps.calls():
                try:
                    used = call.used()
                except OSError:  # its thread has ended
                    continue
                if used > CALL_CPU_SECONDS + TOKEN_OVERRUN_CPU_SECONDS:
                    print(f"backend: a call has used {used:.0f} s of CPU outside the model, inside one token "
                          f"(a grammar that can be read in too many ways): ending the server, which Docker "
                          f"restarts", file=sys.stderr, flush=True)
                    os._exit(70)
    threading.Thread(target=watch, name="call-budget-watch", daemon=True).start()


def values_in(value, most: int) -> int:
    """How many values a parsed JSON body holds, as MAX_BODY_VALUES counts
    them; counting stops once past `most`. Walked without recursion."""
    count, stack = 0, [value]
    while stack and count <= most:
        node = stack.pop()
        if isinstance(node, dict):
            items = list(node.values())
        elif isinstance(node, list):
            items = node
        else:
            continue
        count += 1 + max(len(items) - 1, 0)
        stack.extend(item for item in items if isinstance(item, (dict, list)))
    return count


def brief_problems(problems: list[dict]) -> str:
    """What a request's validation found, in a line: how many problems and
    where the first PROBLEMS_NAMED are, never the input itself (the
    server's own answer wrote every problem with its input: some 1.9 KB
    for each message of an unknown role)."""
    named = "; ".join(f"{'.'.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg', '')}"[:200]
                      for problem in problems[:PROBLEMS_NAMED])
    more = f" (and {len(problems) - PROBLEMS_NAMED} more)" if len(problems) > PROBLEMS_NAMED else ""
    return f"the request is not one this API takes: {named}{more}"


# The status of an answer to a client that has gone (nginx's for the same).
CLIENT_LEFT = 499


def said_dropped() -> None:
    print("backend: a request whose client left before it had the model: dropped", file=sys.stderr, flush=True)


# The request a route is serving, for a call to ask whether its client is
# still there (set by guard_requests, read by drop_calls_whose_client_left).
CALLER = contextvars.ContextVar("caller", default=None)


def guard_requests() -> None:
    """Every route of the server: a body of more than MAX_BODY_BYTES bytes
    is refused as it is read, one of more than MAX_BODY_VALUES values before
    it is validated, a request whose client has gone by
    the time its body is read is dropped, a chat's messages are checked up
    to the first wrong one, and a body the server's types do not take is
    answered 400 with brief_problems (the server's own handler wrote every
    problem with its input, into an answer and its log, as a 500).
    FastAPI's handler of a route is wrapped; routes make theirs as they are
    made, so this runs before the server's app is imported."""
    from typing import Annotated, List

    from fastapi import routing
    from fastapi.exceptions import RequestValidationError
    from llama_cpp.llama_types import ChatCompletionRequestMessage
    from pydantic import FailFast, TypeAdapter, ValidationError
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, Response

    # A chat's messages, up to the first that is none of the kinds of
    # message: the server's own validation tries each message against every
    # kind (some 10 problems a message), and goes on to the last message.
    messages_checked = TypeAdapter(Annotated[List[ChatCompletionRequestMessage], FailFast()]).validate_python

    def refusal(message: str, code: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": code}}, status_code=status)

    def dropped() -> Response:
        said_dropped()
        return Response(status_code=CLIENT_LEFT)

    async def within_bound(request) -> bool:
        """The body read, kept by the request (FastAPI's read is this one),
        unless it is over MAX_BODY_BYTES: then False, at its declared length
        or, sent in chunks, at the first byte past the bound."""
        length = request.headers.get("content-length")
        if length is not None and not (length.isascii() and length.isdigit() and len(length) <= 12
                                       and int(length) <= MAX_BODY_BYTES):
            return False
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return False
            chunks.append(chunk)
        request._body = b"".join(chunks)  # where Starlette's body() keeps what it read
        return True
    handler_of = routing.APIRoute.get_route_handler

    def get_route_handler(self):
        handle = handler_of(self)
        chat = self.path.endswith("/chat/completions")

        async def guarded(request):
            if request.method == "POST":
                try:
                    # Read before asking after the client: the answer would take a piece of it.
                    if not await within_bound(request):
                        return refusal(f"the body is over {MAX_BODY_BYTES // 2**20} MiB: this API takes at most "
                                       f"that", "too-large", 413)
                except ClientDisconnect:
                    return dropped()
                if await request.is_disconnected():
                    return dropped()
                try:
                    body = await request.json()  # kept by the request: FastAPI's parse is this one
                except ValueError:
                    body = None  # FastAPI says what is wrong with it, briefly (below)
                except RecursionError:  # Python's parser's own bound on nesting (about 1,000)
                    return refusal("the body nests too deep", "invalid_request")
                if values_in(body, MAX_BODY_VALUES) > MAX_BODY_VALUES:
                    return refusal(f"the body holds more than {MAX_BODY_VALUES} values (objects, arrays and "
                                   f"their items): this API takes at most that many", "too-many-values")
                if chat and isinstance(body, dict) and isinstance(body.get("messages"), list):
                    try:
                        messages_checked(body["messages"])
                    except ValidationError as e:
                        return refusal(brief_problems([{**problem, "loc": ("body", "messages", *problem["loc"])}
                                                       for problem in e.errors(include_input=False)]),
                                       "invalid_request")
            caller = CALLER.set(request)
            try:
                return await handle(request)
            except RequestValidationError as e:
                return refusal(brief_problems(e.errors()), "invalid_request")
            finally:
                # A stream is sent after this returns, by tasks of its own
                # that the server ends when the client goes.
                CALLER.reset(caller)
        return guarded
    routing.APIRoute.get_route_handler = get_route_handler


def drop_calls_whose_client_left() -> None:
    """A completion call waits for the model behind the one answering; one
    whose client has gone meanwhile is dropped (499), looked at every
    CLIENT_POLL_SECONDS. Tried as an attacker would: calls sent and given up
    at once passed the ingress's bound of 4 in progress (the ingress lets a
    call go when its client does) and piled up in the server, each holding
    its body, until it was killed for its memory; and for minutes after the
    attacker stopped, the model answered calls nobody was waiting for. The
    server itself looked only once a call had the model, and an embedding's
    call never. The completion routes look the lock up by name at each
    call; those that take it as a dependency (embeddings, models) were
    given the server's own as they were made, and are given this one in
    each app the server makes."""
    import anyio
    from fastapi import HTTPException
    from llama_cpp.server import __main__ as main
    from llama_cpp.server import app

    async def acquired(lock) -> None:
        request = CALLER.get()
        while True:
            with anyio.move_on_after(CLIENT_POLL_SECONDS):
                await lock.acquire()
                return
            if request is not None and await request.is_disconnected():
                said_dropped()
                raise HTTPException(status_code=CLIENT_LEFT, detail="the client left before its call had the model")

    async def get_llama_proxy():
        # The server's own, but for the waits: the outer lock is the queue,
        # the inner one the model (a stream looks at the outer one to learn
        # that a call is waiting).
        await acquired(app.llama_outer_lock)
        release_outer = True
        try:
            await acquired(app.llama_inner_lock)
            try:
                app.llama_outer_lock.release()
                release_outer = False
                yield app._llama_proxy
            finally:
                app.llama_inner_lock.release()
        finally:
            if release_outer:
                app.llama_outer_lock.release()
    servers, make = app.get_llama_proxy, main.create_app

    def create_app(*args, **kwargs):
        made = make(*args, **kwargs)
        made.dependency_overrides[servers] = get_llama_proxy  # FastAPI's own way to swap a dependency
        return made
    app.get_llama_proxy = get_llama_proxy
    main.create_app = create_app  # looked up by name by the server's main()


class ReaderWaited:
    """The stream a streamed call's chunks are sent into, on their way to
    its reader, that ends the call once it has waited READER_WAIT_SECONDS in
    all for the reader to take them."""

    def __init__(self, stream, seconds: float = READER_WAIT_SECONDS):
        self.stream, self.left = stream, seconds

    async def __aenter__(self):
        await self.stream.__aenter__()
        return self

    async def __aexit__(self, *exc):
        return await self.stream.__aexit__(*exc)

    async def send(self, item) -> None:
        import anyio
        started = time.monotonic()
        with anyio.move_on_after(self.left) as waited:
            await self.stream.send(item)
        self.left -= time.monotonic() - started
        if waited.cancelled_caught:
            print(f"backend: a stream's reader took its chunks too slowly ({READER_WAIT_SECONDS} s waited in "
                  f"all): ended, the model freed", file=sys.stderr, flush=True)
            # As the server ends a stream whose client went away: the model is let go.
            raise anyio.get_cancelled_exc_class()()


def refuse_text_logit_bias() -> None:
    """A request with `logit_bias_type: tokens` is refused before its keys
    are turned into tokens, which the server does on its event loop (the
    ingress takes the type out of API calls; this covers the UI's routes)."""
    from llama_cpp.server import app

    def refused(llama, logit_bias):
        raise LogitBiasRefused()
    # Looked up by name by the routes' preparation, at each call.
    app._logit_bias_tokens_to_input_ids = refused


def bound_reader_waits() -> None:
    """Every streamed call's chunks go to its reader through ReaderWaited.
    The server's routes look its publisher up by name at each call."""
    from llama_cpp.server import app
    publish = app.get_event_publisher

    async def published(*args, inner_send_chan, **kwargs):
        return await publish(*args, inner_send_chan=ReaderWaited(inner_send_chan), **kwargs)
    app.get_event_publisher = published


def server(config_path: str) -> None:
    """llama-cpp-python's server on one config file, its requests' shape
    bounded, its grammars guarded, its calls' CPU budgeted, their waits for
    a reader bounded and those whose client left dropped."""
    guard_requests()  # first: the server's routes are made as its app is imported
    guard_grammars()
    budget_calls()
    bound_reader_waits()
    refuse_text_logit_bias()
    drop_calls_whose_client_left()
    from llama_cpp.server.__main__ import main
    sys.argv = ["llama_cpp.server", "--config_file", config_path]
    main()


def check() -> int:
    problems = model_problems(load_config())
    refuse(problems)
    return 2 if problems else 0


def health() -> int:
    config = load_config()
    ports = [config["port"]] + ([config["embeddings"]["port"]] if config.get("embeddings") else [])
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=3) as response:
                if response.status != 200:
                    return 1
        except OSError:
            return 1
    return 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command == "health":
        sys.exit(health())
    if command == "check":
        sys.exit(check())
    if command == "server":
        server(sys.argv[2])
        sys.exit(0)
    if command == "pooling":
        print(json.dumps(pooling_overrides(sys.argv[2])))
        sys.exit(0)
    serve()
