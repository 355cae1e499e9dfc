"""Fixtures of the evaluation tests."""

import pytest
import typer

from opensora_core.eval.cli import eval_command


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("noop", hidden=True)(lambda: None)  # a group, so `eval` is a subcommand
    return app
