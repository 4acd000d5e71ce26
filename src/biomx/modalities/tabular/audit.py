"""What the data audit asks of tables (`protocols.AuditsData`): identical feature rows (a hash of
each row's values), missing cells per column, and each numeric column for outliers. Near
duplicates are not looked for: close rows are common and legitimate in clinical tables."""

from __future__ import annotations

import numpy as np

from biomx.data.samples import Samples
from biomx.data_audit.fingerprints import Fingerprints
from biomx.modalities.common.table_audit import missing_cells, numeric_measures
from biomx.modalities.tabular.pipeline import sample_digests


def fingerprints(samples: Samples) -> Fingerprints | None:
    return Fingerprints(sample_digests(samples), "identical feature values (hash of the row)")


def describe_sizes(samples: Samples) -> dict[str, np.ndarray]:
    return numeric_measures(samples.inputs.types, samples.inputs.values)


def missing_values(samples: Samples) -> dict[str, int]:
    return missing_cells(samples.inputs.types, samples.inputs.values)
