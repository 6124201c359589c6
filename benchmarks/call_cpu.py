"""The CPU a completion call uses outside the model's decode, as the
backend's budget counts it (images/llama-cpp/backend.py, CALL_CPU_SECONDS):
answers of up to 2,048 tokens with 4 stop strings, with and without a JSON
schema, and the schemas an attacker tuned. Run inside the backend image,
with the model and the backend's settings (its 2 threads, 2 CPUs):

    docker run --rm --cpus 2 -v $PWD/models:/models:ro -v $PWD/benchmarks:/bench:ro \
        -v $PWD/images/llama-cpp:/backend:ro \
        --entrypoint /opt/venv/bin/python IMAGE /bench/call_cpu.py /models/SmolLM2-135M-Instruct.Q4_1.gguf [CASE...]

CASE: those of CASES, or "attack"; all when none is named.
"""
import importlib.util
import json
import sys
import time

spec = importlib.util.spec_from_file_location("backend", "/backend/backend.py")
backend = importlib.util.module_from_spec(spec)
spec.loader.exec_module(backend)
backend.CALL_CPU_SECONDS = backend.TOKEN_OVERRUN_CPU_SECONDS = 10 ** 6  # measured here, never ended
backend.budget_calls()
calls = []  # every call's CallCpu, kept to be read once it has ended
init = backend.CallCpu.__init__


def kept(self, *args, **kwargs):
    init(self, *args, **kwargs)
    calls.append(self)


backend.CallCpu.__init__ = kept

from llama_cpp import Llama  # noqa: E402

STOPS = ["###", "User:", "</answer>", "\n\n\n\n"]
CASES = {
    "plain": {},
    "json schema": {"response_format": {"type": "json_object", "schema": {
        "type": "object", "properties": {"story": {"type": "string"}, "lines": {
            "type": "array", "items": {"type": "string", "maxLength": 1000}}}, "required": ["story", "lines"]}}},
    "any json": {"response_format": {"type": "json_object"}},
}
ATTACK = {"response_format": {"type": "json_object", "schema": {"type": "string",
                                                                "pattern": "^(a{0,20}){55}a{1000}$"}}}

llama = Llama(sys.argv[1], n_ctx=2048, n_threads=2, verbose=False)
messages = [{"role": "user", "content": "Write a very long story, with many lines, about a lighthouse keeper."}]
named = sys.argv[2:] or [*CASES, "attack"]
for name, extra in CASES.items():
    if name not in named:
        continue
    for stream in (False, True):
        started, cpu = time.monotonic(), time.process_time()
        answer = llama.create_chat_completion(messages=messages, max_tokens=2048, stop=STOPS, stream=stream,
                                              seed=1, **extra)
        tokens = (sum(1 for c in answer if c["choices"][0]["delta"].get("content")) if stream
                  else answer["usage"]["completion_tokens"])  # a stream: its pieces, about a token each
        print(json.dumps({"case": name, "stream": stream, "tokens": tokens,
                          "outside_the_model_s": round(calls[-1].used(), 2),
                          "per_token_ms": round(1000 * calls[-1].used() / max(tokens, 1), 2),
                          "process_cpu_s": round(time.process_time() - cpu, 1),
                          "wall_s": round(time.monotonic() - started, 1)}), flush=True)
# The attacker's pattern: a few tokens, to see what each costs here.
if "attack" in named:
    answer = llama.create_chat_completion(messages=[{"role": "user", "content": "Say aaaa."}], max_tokens=4, **ATTACK)
    tokens = answer["usage"]["completion_tokens"]
    print(json.dumps({"case": "attack ^(a{0,20}){55}a{1000}$", "tokens": tokens,
                      "outside_the_model_s": round(calls[-1].used(), 2),
                      "per_token_s": round(calls[-1].used() / max(tokens, 1), 2)}), flush=True)
