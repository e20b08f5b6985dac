"""Figures (PNG, written atomically): learning curves, the reliability diagram, the accuracy
against latency trade-off. Without matplotlib each is skipped with one line on stderr."""

from __future__ import annotations

import sys
from pathlib import Path

from joryu.atomic import atomic_path

_SAID = set()


def pyplot(purpose: str):
    """matplotlib.pyplot (Agg backend), or None when it is not installed, saying so once per
    process in one line on stderr."""
    try:
        import matplotlib
    except ImportError:
        if "matplotlib" not in _SAID:
            _SAID.add("matplotlib")
            print(f"joryu: figures skipped ({purpose} and any other): they need matplotlib, which is not "
                  "installed; pip install 'joryu[plot]' (or pip install matplotlib)", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_fig(fig, path: Path) -> None:
    """Write a figure atomically (a temporary file, then rename)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")


def reliability_diagram(results: dict[str, dict], path: str | Path) -> Path:
    """One panel per model: accuracy against confidence per bin, the gap shaded, ECE in the title
    (None, with a one-line notice, when matplotlib is not installed)."""
    plt = pyplot("the reliability diagram")
    if plt is None:
        return None
    path = Path(path)
    k = len(results)
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k, 3.6), dpi=100, squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        bins = r["ece_bins"]
        edges = [i / bins for i in range(bins)]
        rel = r["reliability"]
        ax.bar(edges, rel["accuracy"], width=1 / bins, align="edge", edgecolor="k", lw=0.5,
               label="accuracy")
        gaps = [abs(c - a) if n else 0 for a, c, n in zip(rel["accuracy"], rel["confidence"], rel["count"])]
        low = [min(a, c) for a, c in zip(rel["accuracy"], rel["confidence"])]
        ax.bar(edges, gaps, bottom=low, width=1 / bins, align="edge", color="tab:red", alpha=0.35,
               label="|accuracy - confidence|")
        for x, a, n in zip(edges, rel["accuracy"], rel["count"]):  # how many predictions each bin holds
            if n:
                ax.text(x + 0.5 / bins, min(a, 0.93) + 0.02, str(n), ha="center", va="bottom",
                        fontsize=5, rotation=90)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max softmax)")
        ax.set_ylabel("accuracy in bin")
        ax.set_title(f"{name}\nECE {r['ece']:.2f}% ({bins} bins)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_fig(fig, path)
    plt.close(fig)
    return path


def train_ce_series(histories: dict[str, list[dict]], ce_runs=()) -> dict[str, list]:
    """Per run, the training cross-entropy with the labels per epoch: the ``train/ce`` term a method
    logs (e.g. KD's hard-label term), or ``train/loss`` for runs whose objective *is* that
    cross-entropy (``ce_runs``: the teacher and the supervised baselines). Runs with neither are
    left out rather than plotted on another quantity."""
    out = {}
    for name, h in histories.items():
        key = "train/ce" if any("train/ce" in r for r in h) else ("train/loss" if name in ce_runs else None)
        if key is not None:
            pts = [(r["epoch"], r[key]) for r in h if key in r]
            if pts:
                out[name] = pts
    return out


def plot_curves(histories: dict[str, list[dict]], out_dir: Path, ce_runs=()) -> list[Path]:
    """Validation top-1 accuracy, validation cross-entropy with the labels and training
    cross-entropy with the labels, per epoch, one line per run; returns the PNG paths.

    The validation curves are measured the same way for every run (the engine's ``val/acc`` and
    ``val/loss``: the network's own predictions on the validation split); the training curve is
    the label cross-entropy on the training batches (see ``train_ce_series``). Each method's own
    training objective (e.g. the T^2-scaled KD loss) is not comparable across methods and stays
    in ``metrics.jsonl``."""
    plt = pyplot("the learning curves")
    if plt is None:
        return []
    out_dir = Path(out_dir)
    paths = []
    plots = []
    for key, ylabel, fname in (("val/acc", "validation top-1 accuracy (%)", "val_accuracy.png"),
                               ("val/loss", "validation cross-entropy with the labels (nats/sample)",
                                "val_cross_entropy.png")):
        series = {name: [(r["epoch"], r[key]) for r in h if key in r] for name, h in histories.items()}
        plots.append((series, ylabel, fname))
    plots.append((train_ce_series(histories, ce_runs),
                  "training cross-entropy with the labels\n(epoch mean over training batches, nats/sample)",
                  "train_cross_entropy.png"))
    for series, ylabel, fname in plots:
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for name, pts in series.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / fname
        save_fig(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def same_architecture(rows: dict[str, dict]) -> list[list[str]]:
    """Groups of rows whose deployed networks have the same parameter count, MACs and file size:
    their latencies differ only by timing noise."""
    groups: dict[tuple, list[str]] = {}
    for name, r in rows.items():
        d = r.get("deploy")
        if d:
            groups.setdefault((d["params"], d.get("macs"), d.get("file_bytes")), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def pooled_latency(rows: dict[str, dict]) -> dict[str, float]:
    """Batch-1 CPU latency (median, ms) per row with deployment numbers; rows of the same
    architecture (``same_architecture``) share the median of their medians, so timing noise is
    not shown as a speed difference between identical networks."""
    out = {n: r["deploy"]["cpu_batch1"]["median_ms"] for n, r in rows.items()
           if r.get("deploy") and "cpu_batch1" in r["deploy"]}
    for group in same_architecture({n: rows[n] for n in out}):
        meds = sorted(out[n] for n in group)
        for n in group:
            out[n] = meds[len(meds) // 2]
    return out


def plot_tradeoff(rows: dict[str, dict], path) -> Path | None:
    """Test top-1 against CPU batch-1 latency, one labelled point per model, the latency's
    spread (10th to 90th percentile of the timed runs) as a horizontal bar. Networks of the same
    architecture are drawn at their pooled median, since a difference between them is timing
    noise, and the caption says so (None without matplotlib)."""
    pts = {k: r for k, r in rows.items() if "deploy" in r and "test_acc" in r}
    if not pts:
        return None
    plt = pyplot("the accuracy-latency plot")
    if plt is None:
        return None
    pooled = pooled_latency(pts)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, r in pts.items():
        b1 = r["deploy"]["cpu_batch1"]
        lat = pooled.get(name, b1["median_ms"])
        lo, hi = b1.get("p10_ms", b1["median_ms"]), b1.get("p90_ms", b1["median_ms"])
        ax.errorbar([lat], [r["test_acc"]], xerr=[[max(0.0, lat - min(lo, lat))], [max(0.0, hi - lat)]],
                    fmt="o", ms=6, capsize=3)
        ax.annotate(name, (lat, r["test_acc"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    threads = next(iter(pts.values()))["deploy"]["threads"]
    ax.set_xscale("log")
    ax.set_xlabel(f"CPU latency at batch 1, median with 10th-90th percentile (ms, {threads} thread(s))")
    ax.set_ylabel("test top-1 accuracy (%)")
    groups = same_architecture(pts)
    if groups:
        ax.set_title("same architecture, one latency (their timings differ only by noise): "
                     + "; ".join(" = ".join(g) for g in groups), fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = Path(path)
    save_fig(fig, path)
    plt.close(fig)
    return path


def plot_comparison(val: dict[str, dict], path, selected: str | None = None) -> Path | None:
    """``joryu compare``'s picture: per method, the paired validation difference against the
    student alone (points) with its 95% t interval, best first; zero marked (None without
    matplotlib or without methods)."""
    if not val:
        return None
    plt = pyplot("the comparison plot")
    if plt is None:
        return None
    names = sorted(val, key=lambda m: -val[m]["mean"])
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.6), dpi=100)
    for i, m in enumerate(names):
        j = val[m]
        lo, hi = j["interval"]
        y = len(names) - 1 - i
        if lo is not None and hi is not None:
            ax.errorbar([j["mean"]], [y], xerr=[[j["mean"] - lo], [hi - j["mean"]]], fmt="o", capsize=4,
                        color="tab:red" if m == selected else "tab:blue")
        else:
            ax.plot([j["mean"]], [y], "o", color="tab:blue")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{m} ({val[m]['verdict']}, n={val[m]['n']})" for m in reversed(names)], fontsize=8)
    ax.set_xlabel("validation top-1 minus the student alone's (points)\nwith the 95% t interval over paired seeds")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path = Path(path)
    save_fig(fig, path)
    plt.close(fig)
    return path
