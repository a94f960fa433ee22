"""Additive attention masks for parallel prefill: which key each query may see, and with what bias.

transformers 5.x passes a user-supplied 4-D float mask ``[batch, 1, q, kv]`` straight to the
attention kernel (sdpa and eager alike), where it is added to the logits. The engine therefore
never patches attention: it writes the whole attention pattern here. The module sits below both
:mod:`raglign.engine` and :mod:`raglign.models` (the transformers generator builds its
shared-prefix scoring masks with it), so neither of those imports the other
(docs/architecture.md).

Two rules are easy to get wrong and are encoded once, in this module:

* Sliding-window layers (Gemma-3) must apply the window by *position* (``q_pos - k_pos < W``,
  transformers' own convention), because under parallel prefill a key's index in the concatenated
  cache is not its position: every document starts at the same position.
* Disallowed entries get the dtype's minimum, never ``-inf``: a row with no visible key (padding)
  would turn into NaN under eager attention, and ``-inf * 0`` poisons gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from raglign.errors import ConfigError

#: The attention layer types the explicit masks cover.
LAYER_TYPES = {"full_attention", "sliding_attention"}
#: Masks below this are clamped before the log, so that a soft mask keeps a finite gradient.
DEFAULT_EPS = 1e-12


def sliding_window(model) -> int | None:
    """The window of the model's sliding-window layers (Gemma-3), or None when it has none.

    A model given explicit masks gets ``{"full_attention": m, "sliding_attention": m_w}`` when
    it has a window. Other layer types would need masks this module does not write: an error.
    """
    cfg = model.config.get_text_config(decoder=True)
    types = set(getattr(cfg, "layer_types", None) or [])
    unknown = types - LAYER_TYPES
    if unknown:
        raise ConfigError(f"{type(model).__name__}: unsupported attention layer types "
                          f"{sorted(unknown)}; explicit masks handle {sorted(LAYER_TYPES)}")
    return cfg.sliding_window if "sliding_attention" in types else None


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None = None,
                  q_pos: torch.Tensor | None = None, k_pos: torch.Tensor | None = None,
                  window: int | None = None) -> torch.Tensor:
    """``[B, Q, K]`` visibility (and optional additive bias) → ``[B, 1, Q, K]`` float mask.

    ``window`` restricts visibility to keys with ``q_pos - k_pos < window`` (positions, not
    indices). ``bias`` may require grad; it flows through ``torch.where`` to the visible entries.
    """
    if window is not None:
        allowed = allowed & ((q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)) < window)
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    visible = zero if bias is None else bias.to(dtype)
    return torch.where(allowed, visible, torch.finfo(dtype).min).unsqueeze(1)


def log_mask(masks: torch.Tensor, eps: float = DEFAULT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Document masks ``[m, n]`` in [0, 1] → (visible ``[m, n]`` bool, log-mask ``[m, n]``).

    An exact 0 hides the document completely (the same attention as if it had never been
    prefilled); a positive value ``v`` adds ``log(max(v, eps))`` to every key of the document,
    which is G-Rerank's masked attention ``M_i exp(q·k) / Σ M_i' exp(q·k')``.
    """
    if masks.dim() != 2:
        raise ValueError(f"masks must be [num_masks, num_docs], got shape {tuple(masks.shape)}")
    if not masks.is_floating_point():
        masks = masks.float()
    if bool(((masks < 0) | (masks > 1) | torch.isnan(masks)).any()):
        raise ValueError("document masks must lie in [0, 1]")
    work = masks if masks.dtype == torch.float64 else masks.float()
    return masks > 0, torch.log(work.clamp_min(eps))


def keep_mask(num_docs: int, keep: Sequence[int],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A hard ``[num_docs]`` mask with ones at ``keep`` (a chosen subset, e.g. an RRPO state)."""
    mask = torch.zeros(num_docs, dtype=dtype)
    if len(keep):
        mask[torch.as_tensor(list(keep), dtype=torch.long)] = 1
    return mask


def leave_one_out_masks(num_docs: int, k: int | None = None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[k, num_docs]`` hard masks: row i keeps the first k documents except document i."""
    k = num_docs if k is None else k
    if not 0 < k <= num_docs:
        raise ValueError(f"leave-one-out needs 0 < k <= {num_docs} documents, got k={k}")
    masks = torch.zeros(k, num_docs, dtype=dtype)
    masks[:, :k] = 1
    masks[torch.arange(k), torch.arange(k)] = 0
    return masks
