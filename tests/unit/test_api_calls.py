"""The owner's API calls as the ingress logs them (one line each: route,
kind of client, model, status) read back and counted for `sandbox status`:
counts, never contents; a line that is not one of them counts for nothing."""
from launcher.commands.audit import api_call, count_api_calls
from launcher.views import api_call_lines

STAMP = "2026-12-01T03:00:00.000000001Z"


def line(route="chat/completions", client="openai-python", model="tiny", status=200, stamp=True):
    text = f"ingress: api call route={route} client={client} model={model} status={status}"
    return f"{STAMP} {text}" if stamp else text


def test_a_call_is_read_with_or_without_the_engines_timestamp():
    assert api_call(line()) == api_call(line(stamp=False)) == {
        "route": "chat/completions", "client": "openai-python", "model": "tiny", "status": "200"}


def test_other_lines_and_forged_ones_are_not_calls():
    assert api_call(f"{STAMP} ingress: refused status=401 reason=no-token request=\"GET /v1/models\"") is None
    assert api_call(f"{STAMP} ingress: listening on 10.0.0.2 for http://127.0.0.1:1/") is None
    # Fields missing, repeated, out of order, or a status that is no number.
    assert api_call(f"{STAMP} ingress: api call route=models client=curl status=200") is None
    assert api_call(line(model="tiny status=500")) is None
    assert api_call(f"{STAMP} ingress: api call client=curl route=models model=- status=200") is None
    assert api_call(line(status="2x0")) is None
    # The text of a call inside another line (a refusal's request, say) is no call.
    assert api_call(f"{STAMP} ingress: refused request=\"{line(stamp=False)}\"") is None


def test_calls_are_counted_by_kind_of_client_and_model_with_the_failures_apart():
    lines = [line(), line(), line(status=500), line(route="embeddings", model="embed"),
             line(route="models", client="curl", model="-"), line(route="models", client="curl", model="-"),
             line(route="embeddings", client="curl", model="-", status=404), line(client="llm"),
             f"{STAMP} ingress: refused status=401 reason=no-token"]
    assert count_api_calls(lines) == [
        {"client": "curl", "model": "-", "calls": 3, "failed": 1},  # a tie: by client, then model
        {"client": "openai-python", "model": "tiny", "calls": 3, "failed": 1},
        {"client": "llm", "model": "tiny", "calls": 1, "failed": 0},
        {"client": "openai-python", "model": "embed", "calls": 1, "failed": 0},
    ]
    assert count_api_calls([]) == []


def test_status_shows_a_line_per_kind_of_client_and_model():
    counted = count_api_calls([line(), line(status=502), line(route="models", client="curl", model="-")])
    assert api_call_lines(counted) == ["  3 API call(s) at /v1/:", "    2 from openai-python, model tiny (1 failed)",
                                       "    1 from curl, no model named"]
    assert api_call_lines([]) == []
