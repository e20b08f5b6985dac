"""``joryu report RUN``: a finished run's tables on the console, from its ``results.json``."""

from __future__ import annotations

import json
from pathlib import Path

from joryu.errors import ConfigError
from joryu.report.tables import comparison_rows, deployment_rows, format_table, quality_rows

HELP = "print a run folder's results, calibration and deployment tables"


def configure(p) -> None:
    p.add_argument("run", help="a run folder (e.g. runs/kd-mnist1d)")


def run(args) -> int:
    """``joryu report RUN``: the run's tables (results, accuracy/calibration/agreement, deployment)
    on the console, from its ``results.json``; ``report.md`` has the same with the plots."""
    path = Path(args.run) / "results.json"
    if not path.is_file():
        raise ConfigError(f"{args.run} has no results.json (not a finished joryu run folder); finish the run "
                          "with --resume, or give the folder a run wrote (e.g. runs/kd-mnist1d)")
    rows = json.loads(path.read_text())["rows"]
    print(format_table(comparison_rows(rows)))
    for title, table in (("accuracy, calibration (ECE, 15 bins) and agreement with the teacher, test split",
                          quality_rows(rows)),
                         ("deployment (CPU; MACs = FLOPs / 2 from FlopCounterMode)", deployment_rows(rows))):
        if table:
            print(f"\n{title}:\n{format_table(table)}")
    d0 = next((r["deploy"] for r in rows.values() if "deploy" in r), None)
    if d0:
        print(f"\nlatency: median / p90 of up to {d0['repeats']} runs at batch 1 and {d0.get('batch_repeats', 10)} "
              f"at batch {d0['throughput_batch']}, {d0['threads']} thread(s); peak memory: one batch-1 forward pass")
    print(f"\nreport: {Path(args.run) / 'report.md'}")
    return 0
