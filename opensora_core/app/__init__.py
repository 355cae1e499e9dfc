"""The web app (`opensora app`): generate videos from any registered or local STDiT-2
model, compare the registered versions' evaluation samples and scores, re-run past
generations.

- `generation`: the Generate form -> `opensora sample`'s settings, and the run
  (`sample_to_files`, the CLI's function) with progress and cancellation; the history.
- `models`: registry versions and local folders, loaded once and kept while in use.
- `ui`: the gradio page over both (the only module that imports gradio).

Only `opensora_core.cli` imports this package.
"""
