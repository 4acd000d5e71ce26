"""A run as one graph: export (ONNX, torch.export, int8), checked against PyTorch, and engines
that run it (`open_engine`). See docs/deployment.md."""
