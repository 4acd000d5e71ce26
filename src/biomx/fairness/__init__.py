"""Subgroups and fairness (`eval.subgroups`; docs/trust.md): per-group metrics with CIs, the task's
disparity measures, per-group thresholds fitted on validation, and loss reweighting by group.

Generic: the modality offers the columns (`protocols.SubgroupModality`), the task scores each
group with its own `evaluate` and adds what only it knows (`protocols.GroupedTask`)."""

from biomx.fairness.evaluate import evaluate_subgroups, subgroup_sections
from biomx.fairness.groups import bin_values, check_subgroups, subgroup_labels
from biomx.fairness.mitigation import group_weights

__all__ = ["evaluate_subgroups", "subgroup_sections", "bin_values", "check_subgroups", "subgroup_labels",
           "group_weights"]
