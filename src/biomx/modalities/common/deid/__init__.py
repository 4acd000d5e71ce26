"""DICOM de-identification (`biomx deid`) and the identifier audit of a run (`biomx audit`)."""
