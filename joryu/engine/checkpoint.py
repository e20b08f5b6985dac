"""Atomic checkpoints: weights (safetensors), optimizer, scheduler, scaler, RNG and loop state.

A checkpoint is a folder ``step-XXXXXXXX`` written under a temporary name and renamed into
place only when complete, so a run killed while saving keeps its last good checkpoint.

Nothing in a checkpoint runs code when read: ``optim.pt`` and ``rng-R.pt`` hold only tensors and
plain containers (the numpy RNG state is stored as a tensor and numbers, python's as lists) and
are read with ``torch.load(weights_only=True)``; a file that needs more is refused in one line.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from joryu import atomic
from joryu.atomic import atomic_path, atomic_write_text
from joryu.errors import CheckpointError, one_line


def save_weights(module: torch.nn.Module, path: str | Path) -> None:
    """Write a state dict as safetensors, atomically (write a temporary file, then rename)."""
    path = Path(path)
    state = module.state_dict()
    if any(type(v).__name__ == "DTensor" for v in state.values()):
        raise CheckpointError("the network is sharded (train.fsdp): gather its weights with "
                              "Engine.full_state_dict on every process, then save that state dict")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


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
    """Every RNG's state as tensors and plain containers (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
             "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_torch(obj, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: a refused write stays an OSError
        torch.save(obj, f)


def safe_torch_load(path: str | Path, what: str = "checkpoint file"):
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code.

    Any failure (truncated, garbage, or a pickle that needs code to load) is one
    ``CheckpointError`` line."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} not found") from None
    except Exception as e:
        msg = str(e)
        if any(k in msg for k in ("Unsupported global", "GLOBAL", "REDUCE", "Unsupported class")):
            raise CheckpointError(
                f"{what} {path} holds pickled Python objects (a whole model or code), not tensors; "
                "joryu does not unpickle code. Save a state dict instead: "
                "torch.save(model.state_dict(), path) or safetensors.torch.save_file") from None
        raise CheckpointError(f"{what} {path} is unreadable (truncated or not a torch file): "
                              f"{type(e).__name__}: {one_line(e)}") from None


def read_state_dict(path: str | Path, what: str = "weights file") -> dict:
    """A state dict from a ``.safetensors`` file or a ``.pt``/``.pth``/``.bin`` torch file, safely."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} not found" if not path.exists() else
                              f"{what} {path} is a folder, not a file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{what} {path} is not a readable safetensors file (truncated or "
                                  f"corrupt): {type(e).__name__}: {one_line(e)}") from None
    state = safe_torch_load(path, what)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} {path} holds a {type(state).__name__}, not a state dict of "
                              "tensors; save model.state_dict()")
    return state


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
                     rank: int, world_size: int, barrier, keep: int = 2, shards=None) -> Path:
    """Every process writes its RNG state; the main process writes the rest and renames.

    ``shards``: for a sharded (FSDP) network, an object whose ``save(folder)`` every process
    calls to write its part of the weights and optimizer states (torch.distributed.checkpoint
    files) into the temporary folder; ``model.safetensors`` and the optimizers in ``optim.pt``
    are then left out. The folder is renamed into place only after every process has written."""
    final = folder / f"step-{step:08d}"
    tmp = folder / f".tmp-step-{step:08d}"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    try:
        _save_torch(rng_state(), tmp / f"rng-{rank}.pt")
        if shards is not None:
            shards.save(tmp)
        barrier()
        if rank == 0:
            if shards is None:
                save_weights(module, tmp / "model.safetensors")
            _save_torch({
                "optimizers": [o.state_dict() for o in optimizers] if shards is None else [],
                "schedulers": [_plain_scheduler_state(s) for s in schedulers],
                "scaler": scaler.state_dict() if scaler is not None else None,
            }, tmp / "optim.pt")
            atomic_write_text(tmp / "state.json", json.dumps({**loop_state, "world_size": world_size,
                                                              "sharded": shards is not None}, indent=1))
    except BaseException:  # a checkpoint that could not be written whole is not kept
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if rank == 0:
        if final.exists():  # the same step written again (after a resume): set the old one aside
            _discard(final)
        atomic.replace(tmp, final)
        for old in list_checkpoints(folder)[:-keep]:
            _discard(old)
    barrier()
    return final


def _plain_scheduler_state(scheduler) -> dict:
    """A scheduler's state without callables (LambdaLR keeps None for plain functions)."""
    state = scheduler.state_dict()
    return {k: v for k, v in state.items() if not callable(v)}


def _discard(ckpt: Path) -> None:
    """Delete a checkpoint folder so that a kill midway never leaves a half one that looks whole:
    it is renamed to a hidden name (which ``list_checkpoints`` ignores) before it is removed."""
    trash = ckpt.with_name(f".trash-{ckpt.name}")
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    atomic.replace(ckpt, trash)
    shutil.rmtree(trash, ignore_errors=True)


def read_checkpoint(path: Path, module, optimizers, schedulers, scaler, rank: int, shards=None) -> dict:
    """Restore a checkpoint written by ``write_checkpoint``; nothing in it can run code.

    ``shards``: as for ``write_checkpoint``; its ``load(folder)`` (every process) restores the
    sharded weights and optimizer states. A sharded checkpoint needs it, a whole one refuses it."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: state.json is unreadable ({one_line(e)}); delete "
                              "the folder to resume from the one before") from None
    if bool(state.get("sharded", False)) != (shards is not None):
        written, now = ("sharded (train.fsdp)", "without") if shards is None else ("whole", "with")
        raise CheckpointError(f"checkpoint {path} was written {written}; this run is {now} train.fsdp: "
                              "resume with the setting that wrote it, or start afresh without --resume")
    if shards is not None:
        shards.load(path)
    else:
        weights = read_state_dict(path / "model.safetensors", "checkpoint weights")
        try:
            module.load_state_dict({k: v.to(next((p.device for p in module.parameters()),
                                                 torch.device("cpu"))) for k, v in weights.items()})
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {path} does not fit the network being resumed: "
                                  f"{one_line(e)}") from None
    opt = safe_torch_load(path / "optim.pt", "checkpoint optimizer state")
    try:
        for o, s in zip(optimizers if shards is None else [], opt["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(schedulers, opt["schedulers"]):
            sch.load_state_dict(s)
        if scaler is not None and opt.get("scaler") is not None:
            scaler.load_state_dict(opt["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path}: optim.pt does not fit this run's optimizers "
                              f"({type(e).__name__}: {one_line(e)})") from None
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.is_file():
        rng = safe_torch_load(rng_file, "checkpoint RNG state")
        try:
            set_rng_state(rng)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"checkpoint {path}: {rng_file.name} is not an RNG state written by "
                                  f"this joryu ({type(e).__name__}: {one_line(e)})") from None
    return state
