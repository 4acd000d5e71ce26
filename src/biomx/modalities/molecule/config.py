"""The molecule modality's config: `data.modality: molecule` and its section `data.molecule`."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from biomx.config import DataConfig, Section, SplitConfig


class MoleculeSettings(Section):
    """How molecules are read, standardised and featurised."""

    smiles_column: str = "smiles"  # source csv
    id_column: str | None = None  # csv column or SDF property naming each molecule
    standardize: bool = True  # largest fragment, neutralised, canonical SMILES (RDKit)
    features: list[Literal["morgan", "descriptors"]] = []  # molecule-level vectors for the model
    morgan_radius: Annotated[int, Field(ge=0, le=6)] = 2
    morgan_size: Annotated[int, Field(gt=0, le=65_536)] = 2048
    morgan_counts: bool = False  # counts instead of bits
    cache: bool = True  # keep featurised molecules on disk, keyed by content and settings
    cache_dir: str | None = None  # default: $BIOMX_CACHE or ~/.cache/biomx
    workers: Annotated[int, Field(ge=0)] = 0  # featurisation processes; 0 = automatic
    cluster_cutoff: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.6  # split method cluster: Tanimoto distance
    max_atoms: Annotated[int, Field(gt=0)] = 1000  # larger molecules are invalid records (listed, skipped)
    # Report test RMSE on activity-cliff compounds vs the rest (regression; needs 5+ test cliffs).
    cliffs: Literal["auto", "off"] = "auto"

    @field_validator("cliffs", mode="before")
    @classmethod
    def _bare_off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML reads a bare `off` as false


class MoleculeSplit(SplitConfig):
    moved: ClassVar[dict[str, str]] = {"cluster_cutoff": "data.molecule.cluster_cutoff"}


class MoleculeData(DataConfig):
    """`data:` for small molecules (SMILES tables, SDF)."""

    modality: Literal["molecule"] = "molecule"
    molecule: MoleculeSettings = MoleculeSettings()
    split: MoleculeSplit = MoleculeSplit()

    sources: ClassVar[tuple[str, ...]] = ("csv", "sdf")
    split_methods: ClassVar[tuple[str, ...]] = ("scaffold", "cluster")
    multi_label_columns: ClassVar[bool] = True
    path_keys: ClassVar[tuple[str, ...]] = ("cache_dir",)
