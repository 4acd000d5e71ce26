"""Privacy: differential privacy for training (DP-SGD through Opacus) and the privacy ledger.

`config` is imported by `biomx.config` and stays free of heavy imports; `dp` imports Opacus (the
`privacy` extra) only when a run asks for DP.
"""
