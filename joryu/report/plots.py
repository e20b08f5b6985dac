"""Learning-curve plots from the engine's per-epoch history rows."""

from __future__ import annotations

from pathlib import Path


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
    from joryu.evaluate import _save_fig, pyplot

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
        _save_fig(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths
