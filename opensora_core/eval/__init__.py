"""Prompt-following evaluation computable without downloaded models: the colour and
motion direction a synthetic prompt names ("a red circle moving left"), checked from
pixels (`metrics`), the diversity of samples of one prompt across seeds, conditioned
generation (`conditioning`), the sampling and scoring of a prompt set (`evaluate`) and
the whole `eval_samples` round (`round`). Import the modules: this package imports
nothing, so the CLI's import stays cheap."""
