"""Fixtures of the evaluation tests."""

import pytest
import typer


@pytest.fixture
def app() -> typer.Typer:
    """The real `opensora` command: `eval-samples` and its old spelling `eval`."""
    from opensora_core.cli import app

    return app
