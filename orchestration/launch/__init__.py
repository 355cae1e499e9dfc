"""Launching training processes: the TorchX component and the process torchrun starts."""
