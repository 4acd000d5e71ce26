"""The sequence modality's config: `data.modality: sequence` and its section `data.sequence`."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from biomx.config import DataConfig, Section, SplitConfig


class SequenceSettings(Section):
    """How DNA, RNA or protein sequences are read and encoded."""

    alphabet: Literal["dna", "rna", "protein"] = "dna"
    length: Annotated[int, Field(gt=0, le=1_000_000)] | None = None  # pad / centre-crop to this length; None = the longest
    files: dict[str, str] | None = None  # source fasta, labels from files: {label: file in data.path}
    label_from: Literal["file", "header", "csv"] = "file"  # source fasta: where labels come from
    labels_csv: str | None = None  # label_from csv: id,label table
    sequence_column: str = "sequence"  # source csv
    id_column: str = "id"
    genome: str | None = None  # source intervals: indexed genome FASTA
    flank: Annotated[int, Field(ge=0)] = 0  # source intervals: bases added on each side
    rc_augment: bool = False  # DNA/RNA: reverse-complement half the training samples
    shift: Annotated[int, Field(ge=0)] = 0  # random shift by up to this many bases
    strand_average: bool = True  # DNA/RNA: average both strands at test and prediction
    known_motifs: dict[str, str] = {}  # class -> consensus (IUPAC), compared in the report
    val_chromosomes: list[str] = []  # split method chromosome: held out for validation (e.g. [chr8])
    test_chromosomes: list[str] = []  # split method chromosome: held out for testing (e.g. [chr9])


class SequenceSplit(SplitConfig):
    moved: ClassVar[dict[str, str]] = {"val_chromosomes": "data.sequence.val_chromosomes",
                                       "test_chromosomes": "data.sequence.test_chromosomes"}  # fmt: skip


class SequenceData(DataConfig):
    """`data:` for DNA, RNA and protein sequences."""

    modality: Literal["sequence"] = "sequence"
    sequence: SequenceSettings = SequenceSettings()
    split: SequenceSplit = SequenceSplit()

    sources: ClassVar[tuple[str, ...]] = ("fasta", "csv", "intervals")
    split_methods: ClassVar[tuple[str, ...]] = ("chromosome",)
    path_keys: ClassVar[tuple[str, ...]] = ("genome", "labels_csv")

    @model_validator(mode="after")
    def _sources_and_chromosomes(self) -> SequenceData:
        s = self.sequence
        if self.source == "intervals" and not s.genome:
            raise ValueError("source 'intervals' needs sequence.genome (an indexed FASTA)")
        if self.split.method == "chromosome" and not s.test_chromosomes:
            raise ValueError("split method 'chromosome' needs sequence.test_chromosomes, e.g. [chr8, chr9]")
        overlap = set(s.val_chromosomes) & set(s.test_chromosomes)
        if overlap:
            raise ValueError(f"chromosomes {sorted(overlap)} are in both sequence.val_chromosomes and "
                             "sequence.test_chromosomes")  # fmt: skip
        return self
