"""Tables of results: a console table and markdown, from the same rows."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from joryu.rundir import atomic_write_text


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def comparison_rows(rows: dict) -> list[list[str]]:
    out = [["model", "params", "CPU latency (ms/sample)", "test acc (%)"]]
    for name, r in rows.items():
        out.append([name, _fmt_params(r["params"]), f"{r['latency_ms']:.3f}", f"{r['test_acc']:.2f}"])
    return out


def format_table(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for j, row in enumerate(table):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(table: list[list[str]]) -> str:
    head, *body = table
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def write_run_report(run_dir: Path, cfg, rows: dict, histories: dict) -> None:
    from joryu.report.plots import plot_curves

    run_dir = Path(run_dir)
    table = comparison_rows(rows)
    pngs = plot_curves(histories, run_dir)
    md = [f"# {cfg.name}", "",
          f"Method `{cfg.method.name}` on `{cfg.data.name}`: teacher "
          f"`{cfg.teacher.name if cfg.teacher is not None else 'none'}`, "
          f"student `{cfg.student.name}`, seed {cfg.seed}. Test accuracy is measured once, after "
          "training; the validation split (carved from the training data) is what the curves show.",
          "", markdown_table(table), ""]
    for p in pngs:
        md += [f"![{p.stem}]({p.name})", ""]
    md += ["## Configuration", "", "```yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).strip(),
           "```", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(md))
    atomic_write_text(run_dir / "results.json", json.dumps({"rows": rows}, indent=1))  # written last
