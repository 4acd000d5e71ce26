"""The column typing and encoding now live in `modalities/common/table_encoding.py` (the history
modality encodes its baseline covariates the same way); this name stays so existing imports keep
working."""

from biomx.modalities.common.table_encoding import (
    MISSING_LEVEL,
    STD_FLOOR,
    UNKNOWN,
    check_labels,
    column_types,
    encoded_names,
    fit,
    infer_type,
    model_inputs,
    parse_column,
    transform,
)

__all__ = ["MISSING_LEVEL", "STD_FLOOR", "UNKNOWN", "check_labels", "column_types", "encoded_names", "fit",
           "infer_type", "model_inputs", "parse_column", "transform"]  # fmt: skip
