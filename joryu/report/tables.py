"""Tables of results: a console table and markdown, from the same rows."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from joryu.atomic import atomic_write_text
from joryu.metrics import ECE_BINS
from joryu.report.figures import (
    plot_curves,
    plot_tradeoff,
    pooled_latency,
    reliability_diagram,
    same_architecture,
)


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def comparison_rows(rows: dict) -> list[list[str]]:
    """The summary table; networks of the same architecture show one pooled latency
    (``pooled_latency``): a difference between them would be timing noise."""
    out = [["model", "params", "CPU latency (ms/sample)", "test acc (%)"]]
    pooled = pooled_latency(rows)
    for name, r in rows.items():
        lat = pooled.get(name, r["latency_ms"])
        out.append([name, _fmt_params(r["params"]), f"{lat:.3f}", f"{r['test_acc']:.2f}"])
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


def _kib(n: int) -> str:
    return f"{n / 1024:.1f}"


def _fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def quality_rows(rows: dict) -> list[list[str]] | None:
    """Accuracy, calibration and fidelity to the teacher (from joryu.evaluate), one row per model."""
    if not any("eval" in r for r in rows.values()):
        return None
    out = [["model", "top-1 (%)", "top-5 (%)", "NLL", "ECE (%)", "agreement with teacher (%)",
            "KL(teacher ‖ model)"]]
    for name, r in rows.items():
        e = r.get("eval")
        if e is None:
            continue
        out.append([name, f"{e['top1']:.2f}", f"{e['top5']:.2f}" if "top5" in e else "-",
                    f"{e['nll']:.4f}", f"{e['ece']:.2f}",
                    f"{e['agreement']:.2f}" if "agreement" in e else "-",
                    f"{e['kl_teacher']:.4f}" if "kl_teacher" in e else "-"])
    return out


def deployment_rows(rows: dict) -> list[list[str]] | None:
    """Size, compute, CPU latency and memory of the network each row deploys."""
    if not any("deploy" in r for r in rows.values()):
        return None
    first = next(r["deploy"] for r in rows.values() if "deploy" in r)
    nb = first["throughput_batch"]
    out = [["model", "params", "file (KiB)", "MACs/sample", "CPU b=1 median / p90 (ms)",
            f"CPU b={nb} median / p90 (ms)", f"CPU b={nb} (samples/s)", "peak fwd memory b=1 (KiB)"]]
    for name, r in rows.items():
        d = r.get("deploy")
        if d is None:
            continue
        out.append([name, _fmt_params(d["params"]), _kib(d["file_bytes"]), _fmt_count(d["macs"]),
                    f"{d['cpu_batch1']['median_ms']:.3f} / {d['cpu_batch1']['p90_ms']:.3f}",
                    f"{d['cpu_batch']['median_ms']:.2f} / {d['cpu_batch']['p90_ms']:.2f}",
                    f"{d['cpu_batch']['samples_per_s']:.0f}", _kib(d["peak_bytes"])])
    return out


def cuda_rows(rows: dict) -> list[list[str]] | None:  # pragma: no cover - only with a GPU
    if not any("cuda" in r.get("deploy", {}) for r in rows.values()):
        return None
    first = next(r["deploy"] for r in rows.values() if "cuda" in r.get("deploy", {}))
    nb = first["throughput_batch"]
    out = [["model", "CUDA b=1 median / p90 (ms)", f"CUDA b={nb} median / p90 (ms)",
            f"CUDA b={nb} (samples/s)", "peak CUDA memory b=1 (KiB)"]]
    for name, r in rows.items():
        c = r.get("deploy", {}).get("cuda")
        if c is None:
            continue
        out.append([name, f"{c['batch1']['median_ms']:.3f} / {c['batch1']['p90_ms']:.3f}",
                    f"{c['batch']['median_ms']:.3f} / {c['batch']['p90_ms']:.3f}",
                    f"{c['batch']['samples_per_s']:.0f}", _kib(c["peak_bytes"])])
    return out


def evidence_lines(ev: dict) -> list[str]:
    """The "did it help?" section: the verdict per split in words, per-seed values, the warnings."""
    if not ev:
        return []
    out = []
    for split in ("val", "test"):
        j = ev.get(split)
        if j is None:
            continue
        name = "validation" if split == "val" else "test"
        out.append(f"- **{j['verdict']}** on the {name} split: {ev['method']} vs {ev['baseline']}, "
                   f"{j['line']}. Per seed (seeds {ev['seeds']}): method "
                   f"{', '.join(f'{v:.2f}' for v in j['method'])}; {ev['baseline']} "
                   f"{', '.join(f'{v:.2f}' for v in j['baseline'])}.")
    trivial = ev.get("trivial")
    if trivial:
        beaten = [k for k in (ev.get("method"), ev.get("baseline")) if k]
        out.append(f"- Trivial baseline (always class {trivial['class']}, the most frequent training label): "
                   f"{trivial['test_acc']:.2f}% on the test split"
                   + (" (the rows' test top-1 are in the table above)" if beaten else "") + ".")
    for w in ev.get("warnings", []):
        out.append(f"- Note: {w}")
    costs = ev.get("costs") or {}
    if costs:
        out.append("- Budget (first seed): " + "; ".join(
            f"{k}: {c['batches']} batches in {c['stages']} stage(s), {c['train_time_s']:.1f} s"
            for k, c in costs.items()) + ".")
    return out


def write_run_report(run_dir: Path, cfg, rows: dict, histories: dict, ce_runs=(), evidence=None) -> str:
    """``report.md``, ``results.json`` and the PNGs of a run (all written atomically); returns the
    markdown text."""
    run_dir = Path(run_dir)
    table = comparison_rows(rows)
    pngs = plot_curves(histories, run_dir, ce_runs)
    md = [f"# {cfg.name}", "",
          f"Method `{cfg.method.name}` on `{cfg.data.name}`: teacher "
          f"`{cfg.teacher.name if cfg.teacher is not None else 'none'}`, "
          f"student `{cfg.student.name}`, seed {cfg.seed}. Test accuracy is measured once, after "
          "training; the validation split (carved from the training data) is what the curves show.",
          "", markdown_table(table), ""]
    if evidence and (evidence.get("val") or evidence.get("test")):
        md += ["## Did it help?", "",
               "The method against what it is compared with, on paired seeds (same initialisation, data "
               "order and augmentation per seed), top-1 accuracy. Verdict: the paired mean difference "
               "clears zero by the one-sided 97.5% t quantile (n - 1 degrees of freedom) times its standard "
               "error, with at least 5 seeds (joryu.stats); the interval is the matching 95% t interval. "
               "Choices read the validation split; the test split is read once, at the end.", "",
               *evidence_lines(evidence), ""]
    trained = {k: r for k, r in rows.items() if r.get("trainable_params") is not None
               and r["trainable_params"] < r.get("params", 0)}
    if trained:  # e.g. a LoRA student: only its adapters trained
        md += ["Trainable parameters while distilling: " + "; ".join(
            f"{k} {_fmt_params(r['trainable_params'])} of {_fmt_params(r['params'])} "
            f"({100 * r['trainable_params'] / max(1, r['params']):.2f}%)" for k, r in trained.items()), ""]
    quality = quality_rows(rows)
    if quality:
        md += ["## Accuracy, calibration, agreement with the teacher", "",
               f"On the test split, of the network each row deploys. ECE: expected calibration error over "
               f"{ECE_BINS} equal-width confidence bins (confidence = max softmax). Agreement: share of test "
               "samples where the model's top-1 class is the teacher's; KL(teacher ‖ model): mean "
               "KL divergence of the model's softmax from the teacher's at temperature 1, in nats "
               "(the fidelity measures of Stanton et al. 2021). NLL: mean cross-entropy with the labels.",
               "", markdown_table(quality), ""]
        evals = {k: r["eval"] for k, r in rows.items() if "eval" in r}
        rel = reliability_diagram(evals, run_dir / "reliability.png")
        if rel is not None:
            md += [f"![reliability]({rel.name})", ""]
    deploy = deployment_rows(rows)
    if deploy:
        d0 = next(r["deploy"] for r in rows.values() if "deploy" in r)
        md += ["## Deployment", "",
               f"The network each row deploys, in eval mode. File: its state dict as safetensors. MACs per "
               "sample: counted by torch.utils.flop_counter.FlopCounterMode at batch 1 (matrix products "
               "and convolutions; MACs = FLOPs / 2). CPU latency: wall time of a whole forward pass, "
               f"median and 90th percentile of up to {d0['repeats']} runs at batch 1 and {d0['batch_repeats']} at "
               f"batch {d0['throughput_batch']} (fewer for a network slower than 5 s a measurement; results.json "
               f"has the count), {d0['threads']} thread(s), on real test inputs. Peak forward "
               "memory: the most memory one batch-1 forward pass allocates beyond the weights and input "
               "(tensor storages created by the operators, counted until released; operator scratch space "
               "not seen).", "", markdown_table(deploy), ""]
        cuda = cuda_rows(rows)
        if cuda:  # pragma: no cover
            md += [f"On CUDA ({d0['cuda']['device']}, precision {d0['cuda']['precision']}):", "",
                   markdown_table(cuda), ""]
        else:
            md += ["No CUDA device was visible, so there are no GPU numbers.", ""]
        for group in same_architecture(rows):
            md += [f"{' and '.join(group)} deploy the same architecture (same parameters, MACs and file "
                   "size): their latencies differ only by timing noise.", ""]
        trade = plot_tradeoff(rows, run_dir / "deployment.png")
        if trade is not None:
            md += [f"![accuracy against latency]({trade.name})", ""]
    if pngs:
        md += ["## Learning curves", "",
               "Per epoch, for every model: top-1 accuracy and cross-entropy with the labels on the "
               "validation split (the engine's val/acc and val/loss), and the cross-entropy with the labels "
               "on the training batches (a method's logged label term, train/ce, or the loss of a run trained "
               "on the labels alone; a run with neither is not drawn). The same quantities for every "
               "method, unlike each method's training objective (in metrics.jsonl).", ""]
    for p in pngs:
        md += [f"![{p.stem}]({p.name})", ""]
    md += ["## Configuration", "", "```yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).strip(),
           "```", ""]
    text = "\n".join(md)
    atomic_write_text(run_dir / "report.md", text)
    atomic_write_text(run_dir / "results.json", json.dumps({"rows": rows, "evidence": evidence or {}},
                                                           indent=1))
    return text


def format_results(results: dict[str, dict]) -> str:
    """A console table of evaluation results, one row per model."""
    has_t = any("agreement" in r for r in results.values())
    extra = [k for k in ("perplexity", "miou") if any(k in r for r in results.values())]
    head = ["model", "n", "top-1 (%)", "top-5 (%)", "NLL", f"ECE (%, {ECE_BINS} bins)"]
    head += [{"perplexity": "perplexity", "miou": "mIoU (%)"}[k] for k in extra]
    if has_t:
        head += ["agreement (%)", "KL(teacher ‖ model)"]
    table = [head]
    for name, r in results.items():
        row = [name, str(r["n"]), f"{r['top1']:.2f}", f"{r['top5']:.2f}" if "top5" in r else "-",
               f"{r['nll']:.4f}", f"{r['ece']:.2f}"]
        row += [f"{r[k]:.2f}" if k in r else "-" for k in extra]
        if has_t:
            row += [f"{r['agreement']:.2f}" if "agreement" in r else "-",
                    f"{r['kl_teacher']:.4f}" if "kl_teacher" in r else "-"]
        table.append(row)
    return format_table(table)
