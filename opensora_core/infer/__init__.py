"""Inference: sampling, mask strategies and export."""
