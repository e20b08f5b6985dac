"""Learning-curve plots from the engine's per-epoch history rows."""

from __future__ import annotations

from pathlib import Path


def plot_curves(histories: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    """Validation top-1 accuracy and validation cross-entropy with the labels per epoch, one line per
    run; returns the PNG paths.

    Both are measured the same way for every run (the engine's ``val/acc`` and ``val/loss``: the
    network's own predictions on the validation split), so a KD run and the student alone are
    compared on one axis; each method's training objective (e.g. the T^2-scaled KD loss) is not
    comparable across methods and stays in ``metrics.jsonl``. Without matplotlib (the ``plot``
    extra) no plot is drawn: one line says how to get them."""
    try:
        import matplotlib
    except ImportError:
        import sys

        from joryu._optional import missing_message

        print(f"joryu: plots skipped: {missing_message('matplotlib', 'drawing learning curves')}",
              file=sys.stderr)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from joryu.evaluate import _save_fig

    out_dir = Path(out_dir)
    paths = []
    for key, ylabel, fname in (("val/acc", "validation top-1 accuracy (%)", "val_accuracy.png"),
                               ("val/loss", "validation cross-entropy with the labels (nats/sample)",
                                "val_cross_entropy.png")):
        series = {name: [(r["epoch"], r[key]) for r in h if key in r] for name, h in histories.items()}
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
