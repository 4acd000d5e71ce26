"""What the image modality tells a run's model card about its data (`protocols.DescribesData`)."""

from __future__ import annotations

from biomx.config import ExperimentConfig
from biomx.datasets import DATASETS

DEIDENTIFICATION = ("not recorded by the run; for DICOM inputs, `biomx deid` removes patient tags (DICOM "
                    "PS3.15 Basic Profile) before training and `biomx audit RUN` looks for the inputs' patient "
                    "identifiers in every file of the run")  # fmt: skip


def data_card(cfg: ExperimentConfig) -> dict[str, str]:
    """An embedded dataset's description, citation and licence; for files, how to de-identify them."""
    card = {"deidentification": DEIDENTIFICATION}
    embedded = DATASETS.get(str(cfg.data.path)) if cfg.data.source in cfg.data.local_sources else None
    if embedded is not None:
        card.update({"description": embedded.description, "citation": embedded.citation,
                     "licence": embedded.licence,
                     "deidentification": "a public dataset, as its publishers de-identified it (see the citation)"})  # fmt: skip
    return card
