"""`biomx deid deid.yaml`: the de-identification as a file (examples/deid.yaml), the same options
as the command line. Unknown keys are refused with a did-you-mean, like biomx's other configs;
relative paths are relative to the file.

    input: scans/                 # a DICOM file or a folder of them
    output: scans_deid/
    mapping: private/map.json     # only if you need to re-identify (owner-only file)
    keep: [PatientAge, PatientSex]
    blank:
      - {modality: US, manufacturer: ACME, region: [0, 0, 640, 60]}
    identifiers: [TRIAL-X-42]     # must not be left in any output file
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from biomx.config import format_validation_error, read_yaml
from biomx.errors import ConfigError
from biomx.modalities.common.deid.files import DeidResult, deidentify_folder
from biomx.modalities.common.deid.pixels import BlankRule


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BlankRuleConfig(_Section):
    """A pixel rectangle with burned-in text on one modality's (and maker's) images."""

    modality: str = Field(min_length=1, max_length=16)  # US, XA, CT, ...
    manufacturer: str = ""  # a case-insensitive part of the Manufacturer attribute; "" matches any
    region: tuple[int, int, int, int]  # x, y, width, height in pixels

    @field_validator("region")
    @classmethod
    def _a_rectangle(cls, value: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x, y, width, height = value
        if min(x, y) < 0 or min(width, height) < 1:
            raise ValueError("region is [x, y, width, height]: x, y at least 0, width and height at least 1")
        return value

    def rule(self) -> BlankRule:
        return BlankRule(self.modality.strip().upper(), self.manufacturer.strip().lower(), *self.region)


class DeidConfig(_Section):
    """What `biomx deid` does, as `deidentify_folder` takes it (docs/privacy.md)."""

    input: Path
    output: Path
    audit: Path | None = None  # default: <output>/deid_audit.csv
    mapping: Path | None = None  # re-identification file, written owner-only; none unless given
    keep: list[str] = Field(default_factory=list)  # attribute keywords kept as they are
    blank: list[BlankRuleConfig] = Field(default_factory=list)
    rename: bool = False  # <pseudonym>/<series>/<instance>.dcm instead of the input paths
    shift_days: int = Field(365, ge=1, le=36_500)
    skip_errors: bool = False
    accept_unmarked: bool = False  # write US/XA/secondary captures without BurnedInAnnotation (flagged)
    identifiers: list[str] = Field(default_factory=list)  # strings no output file may hold

    def resolved(self, base: Path) -> DeidConfig:
        """The same config with its relative paths taken from `base` (the YAML file's folder)."""
        def at(path: Path | None) -> Path | None:
            return None if path is None else path if path.is_absolute() else base / path

        return self.model_copy(update={"input": at(self.input), "output": at(self.output),
                                       "audit": at(self.audit), "mapping": at(self.mapping)})  # fmt: skip


def load_deid_config(path: str | Path) -> DeidConfig:
    """Read and check a de-identification YAML file.

    Raises:
        ConfigError: one line per problem, naming the key.
    """
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (input, output, mapping, keep, blank, ...)")
    try:
        cfg = DeidConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {format_validation_error(err, DeidConfig)}") from None
    return cfg.resolved(path.parent)


def run_deid(cfg: DeidConfig, echo: Callable[[str], None] = print) -> DeidResult:
    """`biomx deid` for a DeidConfig (from `load_deid_config` or built in Python)."""
    return deidentify_folder(cfg.input, cfg.output, audit=cfg.audit, mapping=cfg.mapping, shift_days=cfg.shift_days,
                             keep=tuple(cfg.keep), rename=cfg.rename, skip_errors=cfg.skip_errors,
                             blank=tuple(b.rule() for b in cfg.blank), accept_unmarked=cfg.accept_unmarked,
                             identifiers=tuple(cfg.identifiers), echo=echo)  # fmt: skip
