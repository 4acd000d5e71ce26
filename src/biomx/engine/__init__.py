"""The modality-agnostic training engine: loop, precision, distribution, checkpoints, logs."""

__all__ = ["checkpoint", "distributed", "logging", "optim", "runtime", "samplers", "sliding_window", "trainer"]  # its modules: import from them (e.g. biomx.engine.checkpoint)
