"""Run reports: one self-contained HTML file per experiment, figures embedded."""

from biomx.report.html import figure_to_data_uri, write_report

__all__ = ["figure_to_data_uri", "write_report"]
