"""Atomic checkpoints: weights (safetensors), optimizer, scheduler, scaler, RNG and loop state.

A checkpoint is a folder ``step-XXXXXXXX`` written under a temporary name and renamed into
place only when complete, so a run killed while saving keeps its last good checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def save_weights(module: torch.nn.Module, path: str | Path) -> None:
    """Write a state dict as safetensors, atomically (write a temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)


def load_weights(module: torch.nn.Module, path: str | Path, strict: bool = True) -> torch.nn.Module:
    path = Path(path)
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    module.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=strict)
    return module


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("step-*") if p.is_dir() and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(folder: str | Path) -> Path | None:
    ckpts = list_checkpoints(folder)
    return ckpts[-1] if ckpts else None


def write_checkpoint(folder: Path, step: int, module, optimizers, schedulers, scaler, loop_state: dict,
                     rank: int, world_size: int, barrier, keep: int = 2) -> Path:
    """Every process writes its RNG state; the main process writes the rest and renames."""
    final = folder / f"step-{step:08d}"
    tmp = folder / f".tmp-step-{step:08d}"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / f"rng-{rank}.pt")
    barrier()
    if rank == 0:
        save_weights(module, tmp / "model.safetensors")
        torch.save({
            "optimizers": [o.state_dict() for o in optimizers],
            "schedulers": [s.state_dict() for s in schedulers],
            "scaler": scaler.state_dict() if scaler is not None else None,
        }, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps({**loop_state, "world_size": world_size}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def read_checkpoint(path: Path, module, optimizers, schedulers, scaler, rank: int) -> dict:
    load_weights(module, path / "model.safetensors")
    opt = torch.load(path / "optim.pt", map_location="cpu", weights_only=False)
    for o, s in zip(optimizers, opt["optimizers"]):
        o.load_state_dict(s)
    for sch, s in zip(schedulers, opt["schedulers"]):
        sch.load_state_dict(s)
    if scaler is not None and opt.get("scaler") is not None:
        scaler.load_state_dict(opt["scaler"])
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((path / "state.json").read_text())
