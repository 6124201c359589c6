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
