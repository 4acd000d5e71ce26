"""Hyperparameter search (`biomx tune CONFIG`, docs/tuning.md): an Optuna study over dotted
config keys whose every trial is a normal run.

`config` is imported by `biomx.config` and stays free of heavy imports; `search` imports Optuna
(the `tune` extra) only when a search runs.
"""
