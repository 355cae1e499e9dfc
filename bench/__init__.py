"""Benchmarks that print tables (they assert nothing): the measuring code, its commands
(`bench/cli.py`) and scripts. Each benchmark runs as `python bench/<file>.py --help`; the
typer ones also as `opensora bench <command>`.

Above the core: a benchmark may import any part of `opensora_core`; no core module but
`opensora_core/cli.py` (lazily, in its `bench` group) imports `bench`.
"""
