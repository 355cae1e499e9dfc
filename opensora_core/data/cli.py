"""`opensora data ...`: curation steps without Dagster."""

from __future__ import annotations

import typer

data_app = typer.Typer(
    no_args_is_help=True, help="Curate raw videos into a training table (ingest, scenes, scores, filters)."
)
