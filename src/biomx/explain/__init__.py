"""Explanations for trained models: Grad-CAM heatmaps and image overlays."""

from biomx.explain.gradcam import find_last_conv, gradcam, overlay

__all__ = ["find_last_conv", "gradcam", "overlay"]
