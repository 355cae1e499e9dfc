"""Training: the stage loop, FSDP2 parallelisation, DCP checkpoints, EMA, MLflow tracking."""
