"""scripts/scorecard.py's policies: each UI's vetted policy holds the preset
the scorecard names, and the variants it runs are valid policies that differ
from the vetted one only as they say (answer mode; no preset; for a recipe,
its image without the recipe's settings)."""
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from launcher.policy import check_policy_file
from launcher.recipes import FRONTEND_RECIPES
from tests.support.canary import hosts_asked

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("scorecard", ROOT / "scripts" / "scorecard.py")
scorecard = importlib.util.module_from_spec(spec)
sys.modules["scorecard"] = scorecard  # its dataclasses look their module up
spec.loader.exec_module(scorecard)


@pytest.mark.parametrize("ui", scorecard.UIS, ids=lambda u: u.name)
def test_each_variant_is_a_valid_policy_that_differs_only_as_it_says(ui, tmp_path):
    vetted = yaml.safe_load((ROOT / "policies" / ui.policy).read_text())
    assert set(ui.preset) <= set(vetted["frontend"].get("env", {})), "a preset the vetted policy does not hold"
    for settings in ui.settings:
        path = scorecard.policy_for(ui, settings, tmp_path)
        policy = yaml.safe_load(path.read_text())
        _, problems = check_policy_file(path, check_port=False, check_model_files=False)
        assert [str(p) for p in problems] == []
        assert policy["audit"] == "connections"
        # Every model (open-webui's embedding model too) is found from the copy's own directory.
        assert [m["path"] for m in policy["models"]] == [str(scorecard.MODEL)] * len(vetted["models"])
        env = policy["frontend"].get("env", {})
        if settings == "preset":
            assert policy["frontend"] == {**vetted["frontend"], **{k: policy["frontend"][k] for k in ("build",)
                                                                   if k in vetted["frontend"]}}
        elif ui.recipe_is_preset:
            recipe = FRONTEND_RECIPES[vetted["frontend"]["recipe"]]
            assert "recipe" not in policy["frontend"] and policy["frontend"]["image"].startswith("sandbox-")
            assert not set(env) & (set(recipe.locked_env) - set(scorecard.RUN_READ_ONLY))
        else:
            assert not set(env) & set(ui.preset)


def test_the_table_shows_each_destination_with_what_was_said():
    run = scorecard.Run("gradio", "defaults", 12.5, True,
                        names=[{"name": "api.gradio.app", "count": 1, "parts": ["frontend"]},
                               {"name": "only.looked.up", "count": 2, "parts": ["frontend"]}],
                        destinations=[{"name": "api.gradio.app", "address": "198.18.1.2", "port": 443, "count": 1,
                                       "said": ["TLS to api.gradio.app"], "parts": ["frontend"], "bodies": []}],
                        page_requests=[{"host": "fonts.googleapis.com", "kind": "stylesheet", "count": 1}])
    row = scorecard.table([run]).splitlines()[2]
    assert "`api.gradio.app:443 (TLS to api.gradio.app) x1`" in row
    assert "`only.looked.up (looked up only) x2`" in row and "`fonts.googleapis.com` (stylesheet) x1" in row
    failed = scorecard.table([scorecard.Run("chainlit", "defaults", error="NotReady: no answer")])
    assert "(failed: NotReady: no answer)" in failed


def test_the_window_proxy_lines_are_counted_by_host():
    lines = ["CONNECT fonts.googleapis.com:443 HTTP/1.1", "GET http://data.example/ping?x=1 HTTP/1.1",
             "CONNECT fonts.googleapis.com:443 HTTP/1.1", ""]
    assert hosts_asked(lines) == [{"host": "fonts.googleapis.com:443", "count": 2},
                                            {"host": "(a connection that asked nothing)", "count": 1},
                                            {"host": "data.example", "count": 1}]
    assert hosts_asked([]) == []


OLD_TABLE = """| UI | settings | ready in | chat | server | page | document |
|---|---|---|---|---|---|---|
| chat | defaults | 9.3 s | answered | nothing | nothing | n/a |
| open-webui | preset | 28.4 s | answered | nothing | nothing | passed |

- chat: our recipe (images/chat); preset: none"""


def test_the_window_column_is_added_to_an_older_table_and_filled_for_the_runs_measured():
    measured = scorecard.Run("open-webui", "preset", window_requests=[])
    text = scorecard.fill_window_column(OLD_TABLE, [measured])
    lines = text.splitlines()
    assert lines[0].endswith(f"| document | {scorecard.WINDOW_HEADER} |") and lines[1] == "|---" * 8 + "|"
    assert lines[2] == "| chat | defaults | 9.3 s | answered | nothing | nothing | n/a | not measured |"
    assert lines[3] == "| open-webui | preset | 28.4 s | answered | nothing | nothing | passed | nothing |"
    assert lines[4:] == ["", "- chat: our recipe (images/chat); preset: none"]
    # Again, on the table with the column: only the measured row's last cell changes.
    again = scorecard.fill_window_column(text, [scorecard.Run("chat", "defaults", window_requests=[
        {"host": "example.org:443", "count": 3}])])
    assert again.splitlines()[2].endswith("| n/a | `example.org:443` x3 |")
    assert again.splitlines()[0] == lines[0] and again.splitlines()[3:] == lines[3:]


def test_the_table_says_what_the_window_asked_or_that_it_was_not_measured():
    rows = scorecard.table([scorecard.Run("chat", "defaults", 9.0, True, window_requests=[]),
                            scorecard.Run("gradio", "defaults", 9.0, True),
                            scorecard.Run("chainlit", "defaults", error="NotReady: no answer")]).splitlines()
    assert scorecard.WINDOW_HEADER in rows[0]
    assert rows[2].endswith("| n/a | nothing |") and rows[3].endswith("| n/a | not measured |")
    assert rows[4].endswith("| (failed: NotReady: no answer) |")
