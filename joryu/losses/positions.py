"""The one shape policy for logits: one prediction per sample, per token or per pixel.

Logits come in three layouts, and every loss and metric in joryu reads them through ``rows``:

=====================  ====================================  =========================
logits                 what they are                         target
=====================  ====================================  =========================
``[B, C]``             one prediction per sample              ``[B]``
``[B, L, C]``          one per token (class axis last,        ``[B, L]``
                       Hugging Face's layout)
``[B, C, H, W, ...]``  one per pixel (class axis 1,           ``[B, H, W, ...]``
                       PyTorch's convolution layout)
=====================  ====================================  =========================

``rows`` flattens them to ``[N, C]`` (N = B, B*L or B*H*W) with a boolean validity mask of
length N: a position counts when its target is not ``-100`` (padding, prompt tokens, unlabelled
pixels) and, when a per-sample or per-position mask is given (``labeled``, ``loss_mask``), the
mask is true there.

Causal language models. Position ``t`` of a causal LM predicts token ``t + 1``; Hugging Face
pairs ``logits[:, :-1]`` with ``labels[:, 1:]`` inside its models. joryu makes the same pairing
once, in the data: ``next_token_targets(input_ids, attention_mask)`` returns
``target[:, t] = input_ids[:, t + 1]`` with ``-100`` at the last position, at padding and (with
``prompt_mask``) at prompt tokens. The target then lines up with the logits position by
position, and every loss, metric and method treats the LM as per-token classification; the
result equals Hugging Face's own shifted loss (``tests/test_hf.py`` checks it on GPT-2).

Hugging Face labels. The one rule for data that carries its own labels: a batch key ``labels``
holds Hugging Face's convention (unshifted: ``labels == input_ids``, ``-100`` where ignored, as
HF's models, collators and TRL use it), and ``target`` is joryu's, aligned with the logits. For a
causal LM (``joryu.outputs.is_causal_lm``) the ``labels`` are shifted once into the target by
``shift_labels`` (``target[:, t] = labels[:, t + 1]``, exactly the pairing of HF's own loss);
for every other model (sequence or token classification) ``labels`` is the target as it is. The
shift always reads ``labels``, never ``target``, so a target is never shifted twice; data that
holds already-shifted labels names them ``target`` (``data.columns: {target: labels}``).
"""

from __future__ import annotations

from torch import Tensor

from joryu.errors import ShapeError

IGNORE_INDEX = -100


def class_dim(logits: Tensor) -> int:
    """The class axis: last for ``[B, C]`` and ``[B, L, C]``, 1 for ``[B, C, H, W...]``."""
    return 1 if logits.dim() >= 4 else logits.dim() - 1


def num_classes(logits: Tensor) -> int:
    """Classes (or vocabulary size) predicted by ``logits``."""
    return int(logits.shape[class_dim(logits)])


def kind(logits: Tensor) -> str:
    """``"classification"`` ([B, C]), ``"tokens"`` ([B, L, C]) or ``"segmentation"`` ([B, C, H, W])."""
    if logits.dim() <= 2:
        return "classification"
    return "tokens" if logits.dim() == 3 else "segmentation"


def per_position(logits: Tensor) -> bool:
    return logits.dim() > 2


def position_shape(logits: Tensor) -> tuple[int, ...]:
    """The shape of a target for ``logits``: ``[B]``, ``[B, L]`` or ``[B, H, W...]``."""
    shape = list(logits.shape)
    del shape[class_dim(logits)]
    return tuple(shape)


def flatten_logits(logits: Tensor) -> Tensor:
    """``[N, C]`` rows: per sample, per token or per pixel."""
    if logits.dim() <= 2:
        return logits
    if logits.dim() == 3:
        return logits.reshape(-1, logits.shape[-1])
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


def _broadcast_mask(mask: Tensor, shape: tuple[int, ...]) -> Tensor:
    mask = mask.bool()
    if tuple(mask.shape) == shape:
        return mask
    if mask.dim() == 1 and mask.shape[0] == shape[0]:  # per-sample mask (``labeled``)
        return mask.view(-1, *([1] * (len(shape) - 1))).expand(shape)
    raise ShapeError(f"mask of shape {tuple(mask.shape)} fits neither the samples nor the positions "
                     f"{shape}")


def valid_mask(logits: Tensor, target: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """Boolean ``[N]``: the positions of ``flatten_logits(logits)`` that count."""
    shape = position_shape(logits)
    valid = None
    if target is not None:
        if tuple(target.shape) != shape:
            raise ShapeError(f"target of shape {tuple(target.shape)} does not fit logits of shape "
                             f"{tuple(logits.shape)} (expected {shape})")
        valid = target != IGNORE_INDEX
    if mask is not None:
        m = _broadcast_mask(mask.to(logits.device), shape)
        valid = m if valid is None else valid & m
    if valid is None:
        return logits.new_ones(shape, dtype=bool).reshape(-1)
    return valid.reshape(-1)


def rows(logits: Tensor, target: Tensor | None = None, mask: Tensor | None = None):
    """``(logits [N, C], target [N] or None, valid [N] bool)``: the one flattening every loss uses."""
    valid = valid_mask(logits, target, mask)
    flat_target = target.reshape(-1) if target is not None else None
    return flatten_logits(logits), flat_target, valid


def targets_fit(logits: Tensor, target: Tensor) -> bool:
    """True when ``target`` has one entry per position of ``logits``."""
    return tuple(target.shape) == position_shape(logits)


def next_token_targets(input_ids: Tensor, attention_mask: Tensor | None = None,
                       prompt_mask: Tensor | None = None) -> Tensor:
    """Targets for a causal LM: ``target[:, t] = input_ids[:, t + 1]``; ``-100`` where there is no
    next token (the last position), where the next token is padding (``attention_mask`` 0) or part
    of the prompt (``prompt_mask`` 1), so those predictions are neither trained nor scored."""
    target = input_ids.new_full(input_ids.shape, IGNORE_INDEX)
    target[:, :-1] = input_ids[:, 1:]
    ignore = input_ids.new_zeros(input_ids.shape, dtype=bool)
    if attention_mask is not None:
        ignore[:, :-1] |= ~attention_mask[:, 1:].bool()
    if prompt_mask is not None:
        ignore[:, :-1] |= prompt_mask[:, 1:].bool()
    return target.masked_fill(ignore, IGNORE_INDEX)


def shift_labels(labels: Tensor) -> Tensor:
    """Hugging Face's causal-LM labels as a target aligned with the logits: ``target[..., t] =
    labels[..., t + 1]`` along the last (sequence) axis, ``-100`` at the last position; the same
    pairing as HF's loss (``logits[:, :-1]`` against ``labels[:, 1:]``). Works on one sample
    ``[L]`` or a batch ``[B, L]``."""
    target = labels.new_full(labels.shape, IGNORE_INDEX)
    target[..., :-1] = labels[..., 1:]
    return target
