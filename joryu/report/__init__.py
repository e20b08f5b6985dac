"""Results tables (markdown + JSON) and plots (PNG)."""

from joryu.report.plots import plot_curves
from joryu.report.tables import format_table, markdown_table, write_run_report

__all__ = ["format_table", "markdown_table", "plot_curves", "write_run_report"]
