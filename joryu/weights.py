"""Reading weights a user brings: one function for every layout joryu understands.

``read_state_dict(path)`` returns a flat ``{name: tensor}``; ``load_into(model, path)`` loads it
into a plain ``nn.Module`` after matching a common key prefix. Understood layouts:

- safetensors (``.safetensors``), or a torch file read with ``torch.load(weights_only=True)``
  (never unpickling code);
- a bare state dict, or one under ``state_dict`` / ``model`` / ``model_state_dict`` /
  ``module`` / ``net`` (torchvision's, Lightning's and most training scripts' layouts);
- keys under a common prefix (``model.``, ``module.``, ``student.``, ``_orig_mod.``: Lightning,
  DataParallel/DDP, a joryu Distiller, ``torch.compile``), matched against the model's own keys;
- a folder holding ``model.safetensors`` or ``pytorch_model.bin`` (a Hugging Face save). To build a
  Hugging Face model from such a folder, name its ``from_pretrained`` as the model instead:
  ``name: "transformers:AutoModelForImageClassification.from_pretrained"`` with
  ``kwargs: {pretrained_model_name_or_path: path/to/folder}``.

A pickled module (``torch.save(model)``) is refused with a one-line CheckpointError (a ConfigError) that says how
to save a state dict instead.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from joryu.errors import CheckpointError, one_line

CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "student")
PREFIXES = ("module.", "model.", "student.", "_orig_mod.", "net.")
HOW_TO_SAVE = ("save a state dict instead: torch.save(model.state_dict(), 'weights.pt') or "
               "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # {"state_dict": {"model": {...}}} and the like
        if _is_state_dict(obj):
            return dict(obj)
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in CONTAINER_KEYS if k in obj and isinstance(obj[k], dict)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, torch.nn.Module):
        raise CheckpointError(f"{path} holds a whole pickled module, not weights; {HOW_TO_SAVE}")
    keys = sorted(obj)[:6] if isinstance(obj, dict) else []
    what = f"a dict with keys {keys}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise CheckpointError(f"{path} holds {what}, not a state dict of tensors (expected a bare state dict or "
                      f"one under {'/'.join(CONTAINER_KEYS[:3])}); {HOW_TO_SAVE}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict stored at ``path`` (see the module docstring for the layouts)."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin", "final.safetensors", "student.safetensors"):
            if (path / name).is_file():
                return read_state_dict(path / name)
        raise CheckpointError(f"{path} is a folder without model.safetensors or pytorch_model.bin; give the "
                          "weights file itself (a Hugging Face folder loads with the model name "
                          "'transformers:AutoModel...from_pretrained', see joryu.weights)")
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found; check the path")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({one_line(e)}); "
                              "re-save it with safetensors.torch.save_file") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "GLOBAL" in msg or "weights_only" in msg.lower() or "Unsupported" in msg:
            raise CheckpointError(f"{path} holds pickled Python objects (e.g. a whole module saved with "
                              f"torch.save(model)), which joryu never unpickles; {HOW_TO_SAVE}") from None
        raise CheckpointError(f"{path} is not a torch weights file ({one_line(e)}); {HOW_TO_SAVE}") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable torch file ({one_line(e)}); "
                          f"{HOW_TO_SAVE}") from None
    return _unwrap(obj, path)


def match_keys(state: dict[str, torch.Tensor], model_keys) -> dict[str, torch.Tensor]:
    """``state`` with a common prefix removed (or the prefixed part selected) so that its keys are
    the model's; unchanged when no prefix gives a better match."""
    want = set(model_keys)
    if set(state) == want:
        return state
    best, best_hits = state, len(want & set(state))
    frontier = [state]
    for _ in range(3):  # nested prefixes: module.model.layer...
        nxt = []
        for cand in frontier:
            for p in PREFIXES:
                sub = {k[len(p):]: v for k, v in cand.items() if k.startswith(p)}
                if not sub:
                    continue
                hits = len(want & set(sub))
                if set(sub) == want:
                    return sub
                if hits > best_hits:
                    best, best_hits = sub, hits
                nxt.append(sub)
        frontier = nxt
    return best


def load_into(model: torch.nn.Module, path: str | Path, what: str = "model") -> torch.nn.Module:
    """Load the weights at ``path`` into ``model`` (strict); a mismatch is one ConfigError line."""
    state = match_keys(read_state_dict(path), model.state_dict().keys())
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k!r}: file {tuple(state[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        raise CheckpointError(f"weights {path} do not fit {what}: {', '.join(parts)}; give the model name and "
                          "kwargs the weights were trained with")
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    return model
