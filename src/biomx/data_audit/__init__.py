"""The data audit (`biomx audit-data CONFIG`, and a section of every run's report): class balance,
missing values, patient overlap, duplicates and near-duplicates within and across splits,
conflicting labels and outliers, each with a one-line verdict. See docs/trust.md.

`audit` runs the checks on what `experiment.prepare` reads up to the split; `fingerprints`
holds what a modality hands it (`Fingerprints`, `NearVectors`); `run` reads a config and writes
the audit JSON. The checks never branch on a modality's or a task's name: what depends on the
kind of data comes through the optional members of `protocols.AuditsData`.
"""
