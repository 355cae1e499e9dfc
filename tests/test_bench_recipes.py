"""The prompt-following benchmark's recipes are valid stage configs, and the command
refuses names it does not know before any work."""

import pytest
from typer.testing import CliRunner

from bench.prompt_following import RECIPES, demo_stages
from opensora_core import cli
from opensora_core.config import StageConfig
from opensora_core.models import load_preset


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_valid_stages(name):
    recipe = RECIPES[name]
    stages = demo_stages(recipe.get("overrides"), recipe.get("per_stage"))
    assert len(stages) == 4
    for stage in stages:
        config = StageConfig.model_validate(stage)
        load_preset(config.model_preset)


def test_unknown_recipe_is_refused():
    result = CliRunner().invoke(cli.app, ["bench", "prompt-following", "--recipes", "demo,fastest"])
    assert result.exit_code == 2 and "fastest" in result.output
