"""Wiring: the Definitions object, resources (MLflow, storage, TorchX), schedules,
sensors, and the `make demo` driver."""
