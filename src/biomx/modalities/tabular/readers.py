"""The table readers now live in `modalities/common/table_readers.py` (the history modality reads
the same CSV/TSV/Parquet files); this name stays so existing imports keep working."""

from biomx.modalities.common.table_readers import (
    FALSE,
    MISSING,
    SUFFIXES,
    TRUE,
    Table,
    bad_value,
    missing_mask,
    no_gc,
    parse_booleans,
    parse_numbers,
    read_table,
    source_of,
    text_cells,
)

__all__ = ["FALSE", "MISSING", "SUFFIXES", "TRUE", "Table", "bad_value", "missing_mask", "no_gc",
           "parse_booleans", "parse_numbers", "read_table", "source_of", "text_cells"]  # fmt: skip
