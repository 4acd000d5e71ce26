"""Modalities: how each kind of raw input (images, ...) becomes tensors."""
