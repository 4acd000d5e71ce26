"""The modality-agnostic training engine: loop, precision, distribution, checkpoints, logs."""
