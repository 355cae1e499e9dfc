"""opensora_core: the ML library of opensora-mlops (pure Python + torch, no orchestration)."""

__version__ = "0.1.0"
