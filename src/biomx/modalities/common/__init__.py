"""What several modalities share: npz arrays, the in-memory tensor dataset, Grad-CAM, paired-scan
folders, scan settings and checks. It imports no concrete modality."""

__all__ = ["gradcam", "msd", "msd_writer", "npz", "planar", "scan_config", "scans", "tensor_dataset"]  # its modules: import from them (e.g. biomx.modalities.common.gradcam)
