"""DICOM de-identification (`biomx deid`) and the identifier audit of a run (`biomx audit`).

From Python (docs/privacy.md):

    from biomx.modalities.common.deid import DeidConfig, audit_run, deidentify_folder, run_deid

    result = deidentify_folder("scans", "scans_deid", keep=("PatientAge",))
    result = run_deid(DeidConfig(input="scans", output="scans_deid", accept_unmarked=True))
    found = audit_run("runs/my_run", identifiers="trial_codes.txt")  # 0: clean
"""

from biomx.modalities.common.deid.config import (
           BlankRuleConfig,
           DeidConfig,
           load_deid_config,
           run_deid,
)
from biomx.modalities.common.deid.files import DeidResult, deidentify_folder
from biomx.modalities.common.deid.pixels import BlankRule
from biomx.modalities.common.deid.scan import audit_run

__all__ = ["BlankRule", "BlankRuleConfig", "DeidConfig", "DeidResult", "audit_run", "deidentify_folder",
           "load_deid_config", "run_deid"]  # fmt: skip
