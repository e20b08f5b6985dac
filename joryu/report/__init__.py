"""Results tables (markdown + JSON) and figures (PNG)."""

from joryu.report.figures import plot_curves
from joryu.report.tables import format_table, markdown_table, write_run_report

__all__ = ["format_table", "markdown_table", "plot_curves", "write_run_report"]
