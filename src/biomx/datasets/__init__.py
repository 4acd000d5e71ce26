"""Real datasets embedded in the package (see ATTRIBUTION.md beside this file).

`DATA_DIR` is the folder of the data files; `DATASETS` / `get_dataset` describe the embedded
datasets that an experiment reads by name. Each modality lists and exports its own datasets
(`biomx datasets`); the exporters live with their modality.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from biomx.errors import ConfigError

DATA_DIR = Path(__file__).parent


@dataclass(frozen=True)
class EmbeddedDataset:
    name: str
    file: str
    modality: str
    classes: tuple[str, ...]
    description: str
    citation: str
    licence: str = "not stated"  # the model card's data licence (ATTRIBUTION.md has the full text)

    @property
    def path(self) -> Path:
        return DATA_DIR / self.file


DATASETS = {
    "pneumoniamnist": EmbeddedDataset(
        name="pneumoniamnist",
        file="pneumoniamnist.npz",
        modality="image",
        classes=("normal", "pneumonia"),
        description="Paediatric chest X-rays, 28x28 grey; official train (4708) and val (524) splits",
        citation=(
            "PneumoniaMNIST, MedMNIST v2 (Yang et al., Scientific Data 2023); images from "
            "Kermany et al., Cell 2018. CC BY 4.0"
        ),
        licence="CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)",
    ),
}


def get_dataset(name: str) -> EmbeddedDataset:
    if name not in DATASETS:
        raise ConfigError(f"data.path: unknown embedded dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name]
