"""Experiment trackers through Hugging Face Accelerate (``train.log_with``).

``train.log_with: [tensorboard]`` (or ``wandb``, ``mlflow``, ``comet_ml``, ``aim``, ``clearml``,
``dvclive``, ...) sends every stage's per-epoch metrics (the rows of ``metrics.jsonl``, which stays),
the run's hyper-parameters (the flattened config) and, at the end, the report's numbers and text
to each tracker. Each stage is one tracker run named ``{train.run_name or experiment name}/{stage}``
in project ``train.project`` (default ``joryu``); file-based trackers write under
``<run folder>/tracking/``. No tracker package is a joryu dependency: the one you name must be
installed (``pip install tensorboard``), else the run stops before training with one line.
"""

from __future__ import annotations

import re
from pathlib import Path

from joryu.errors import ConfigError

# tracker name -> the import it needs and what to pip install
_PACKAGES = {
    "tensorboard": (("torch.utils.tensorboard", "tensorboard"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "comet_ml": (("comet_ml",), "comet_ml"),
    "aim": (("aim",), "aim"),
    "clearml": (("clearml",), "clearml"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
    "trackio": (("trackio",), "trackio"),
}


def known_trackers() -> list[str]:
    return sorted(_PACKAGES)


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_trackers(names, where: str = "train.log_with") -> list[str]:
    """The tracker names, validated: unknown or not installed -> one-line ConfigError naming
    ``where`` (the config key: ``train.log_with``, ``teacher.train.log_with``)."""
    names = list(names or [])
    for name in names:
        if not isinstance(name, str) or name not in _PACKAGES:
            raise ConfigError(f"{where}: unknown tracker {name!r}; known: {', '.join(known_trackers())} "
                              "(or [] for none)")
        modules, pip = _PACKAGES[name]
        if not all(_installed(m) for m in modules):
            raise ConfigError(f"{where}: tracker {name!r} needs the package {pip!r}, which is not "
                              f"installed; pip install {pip} (or remove it from {where})")
    return names


def accelerator_kwargs(cfg, run_dir: Path | None) -> dict:
    """``Accelerator(...)`` keyword arguments for the trackers of a stage's TrainConfig."""
    names = getattr(cfg, "log_with", None)
    if not names or run_dir is None:
        return {}
    return {"log_with": check_trackers(names), "project_dir": str(tracking_dir(run_dir))}


def tracking_dir(run_dir: Path) -> Path:
    """``<run folder>/tracking``: the experiment's root folder, above any stage sub-folder."""
    run_dir = Path(run_dir)
    for p in (run_dir, *run_dir.parents):
        if (p / "config.yaml").is_file():
            return p / "tracking"
    return run_dir / "tracking"


def run_name(cfg, stage: str) -> str:
    base = getattr(cfg, "run_name", None) or "run"
    return f"{base}/{slug(stage)}"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def flat(d, prefix: str = "") -> dict:
    """Nested config -> {dotted key: int | float | str | bool} (lists and None as text)."""
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        elif isinstance(v, bool | int | float | str):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def numeric(row: dict) -> dict:
    return {k: float(v) for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def start(accelerator, cfg, stage: str, hparams: dict | None = None) -> bool:
    """``init_trackers`` for one stage; False (and nothing done) when no tracker is configured."""
    if not getattr(accelerator, "log_with", None):
        return False
    name = run_name(cfg, stage)
    project = getattr(cfg, "project", None) or "joryu"
    kwargs = {"wandb": {"name": name}, "mlflow": {"run_name": name}, "comet_ml": {"experiment_name": name}}
    # tensorboard: one sub-folder per stage under <run>/tracking/<project>/
    accelerator.init_trackers(f"{project}/{name}" if _only_files(accelerator) else project,
                              config=flat(hparams or cfg.model_dump(mode="json")),
                              init_kwargs={k: v for k, v in kwargs.items()})
    return True


def _names(accelerator) -> list[str]:
    return [str(getattr(t, "value", t)).lower() for t in accelerator.log_with]


def _only_files(accelerator) -> bool:
    return all(n in ("tensorboard", "dvclive", "aim") for n in _names(accelerator))


def log(accelerator, row: dict, step: int) -> None:
    if getattr(accelerator, "log_with", None) and accelerator.trackers:
        accelerator.log(numeric(row), step=step)


def end(accelerator) -> None:
    if getattr(accelerator, "log_with", None) and accelerator.trackers:
        accelerator.end_training()


def log_report(cfg, run_dir: Path, rows: dict, report_text: str) -> None:
    """The final report to the configured trackers: each row's numbers and the markdown text."""
    if not cfg.train.log_with or run_dir is None:
        return
    from accelerate import Accelerator

    acc = Accelerator(cpu=True, **accelerator_kwargs(cfg.train, run_dir))
    start(acc, cfg.train, "report", hparams=cfg.model_dump(mode="json"))
    values = {}
    for name, r in rows.items():
        for k, v in flat(r, f"{slug(name)}/").items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                values[k] = float(v)
    acc.log(values, step=0)
    if any(n != "mlflow" for n in _names(acc)):
        acc.log({"report": report_text}, step=0)
    acc.end_training()
