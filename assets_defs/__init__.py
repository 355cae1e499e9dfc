"""Dagster assets and asset checks: thin wrappers over `opensora_core` functions."""
