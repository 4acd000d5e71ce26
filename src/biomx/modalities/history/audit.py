"""What the data audit asks of patient histories (`protocols.AuditsData`): identical histories
(the same visits, values and covariates), missing covariates and variables never measured for a
patient, and the number of visits and the follow-up time for outliers."""

from __future__ import annotations

import numpy as np

from biomx.data.samples import Samples
from biomx.data_audit.fingerprints import Fingerprints
from biomx.modalities.common.table_audit import missing_cells
from biomx.modalities.history.pipeline import HistoryRecord, sample_digests


def fingerprints(samples: Samples) -> Fingerprints | None:
    return Fingerprints(sample_digests(samples), "identical visits, values and covariates")


def describe_sizes(samples: Samples) -> dict[str, np.ndarray]:
    record: HistoryRecord = samples.inputs
    visits = np.array([len(t) for t in record.times], dtype=np.float64)
    follow_up = np.array([float(t.max()) if len(t) else np.nan for t in record.times], dtype=np.float64)
    return {"visits": visits, "follow-up time": follow_up}


def missing_values(samples: Samples) -> dict[str, int]:
    """Covariates missing (baseline cells) and, per variable, patients with no measurement of it."""
    record: HistoryRecord = samples.inputs
    counts = missing_cells(record.baseline.types, record.baseline.values, record.rows)
    for k, variable in enumerate(record.variables):
        counts[f"{variable} (never measured)"] = sum(
            1 for v in record.values if not len(v) or not np.isfinite(v[:, k]).any())
    return counts
