"""A trained reranker's weights moved back toward its starting model's (weight-space ensembling).

WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022) exports
``(1 − w) · θ_trained + w · θ_base`` instead of ``θ_trained``: fine-tuning on a few questions
moves the weights along a path on which the starting model's knowledge of everything else is
kept near ``θ_base``, and the interpolation keeps part of it on questions training never saw.
That is the anchor's aim (docs/distillation.md) by another route: the anchor limits what the
*targets* may ask of the student on the training questions; merging limits how far the
*weights* travel, which is what decides the unseen ones.

Both models must share one architecture (a student and the model it was trained from); a
parameter that only one has, or of another shape, is an error naming it. Integer buffers
(position ids) must be equal and are kept. The sum is taken in float32 and cast back.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from raglign.errors import ConfigError


def interpolate_state(trained: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
                      base_weight: float) -> dict[str, torch.Tensor]:
    """``(1 − base_weight) · trained + base_weight · base``, tensor by tensor."""
    if not 0.0 <= base_weight <= 1.0:
        raise ConfigError(f"base_weight must lie in [0, 1], got {base_weight}")
    only = sorted(set(trained) ^ set(base))
    if only:
        raise ConfigError(f"the models differ in parameters: {', '.join(only[:5])}"
                          + (f" and {len(only) - 5} more" if len(only) > 5 else ""))
    merged = {}
    for name, t in trained.items():
        b = base[name]
        if t.shape != b.shape:
            raise ConfigError(f"parameter {name}: shape {tuple(t.shape)} in the trained model, "
                              f"{tuple(b.shape)} in the base")
        if not t.is_floating_point():
            if not torch.equal(t, b.to(t.device)):
                raise ConfigError(f"non-float tensor {name} differs between the two models")
            merged[name] = t.clone()
            continue
        mix = t.float().lerp(b.to(t.device).float(), base_weight)
        merged[name] = mix.to(t.dtype)
    return merged


def merge_models(trained: str, base: str, output: str, base_weight: float, kind: str,
                 seed: int = 42) -> str:
    """Write ``(1 − base_weight) · trained + base_weight · base`` to ``output`` in ``trained``'s
    format (a sentence-transformers directory for ``bi``, a transformers one for ``cross``).
    ``base`` is what ``raglign train``'s ``model`` was: a packaged short name, a directory or a
    hub id. It is loaded after ``torch.manual_seed(seed)``, as the train job builds it, so a
    cross-encoder trained from a bare encoder is merged with the same new head it started from
    (pass the training run's ``seed``)."""
    from raglign.models.rerankers import load_reranker

    model = load_reranker(trained, kind=kind)
    torch.manual_seed(seed)
    start = load_reranker(base, kind=kind)
    model.load_state_dict(interpolate_state(model.state_dict(), start.state_dict(), base_weight))
    card = (f"Weights `{1 - base_weight:g} x {trained} + {base_weight:g} x {base}` "
            "(raglign models merge; weight-space ensembling, WiSE-FT).\n")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    model.save(output, model_card=card)
    return output


def merge_trained(trained: str, output: str, base_weight: float, base: str | None = None,
                  kind: str | None = None, seed: int | None = None) -> str:
    """:func:`merge_models` with ``base``, ``kind`` and ``seed`` defaulting to the training
    run's own (its ``train_config.yaml`` beside the exported ``model/`` directory), so a model
    ``raglign train`` wrote needs nothing else; returns the base used."""
    import yaml

    from raglign.training_config import TrainConfig

    run_cfg = Path(trained).parent / "train_config.yaml"
    recorded = yaml.safe_load(run_cfg.read_text()) if run_cfg.exists() else {}
    base = base or recorded.get("model")
    kind = kind or recorded.get("kind")
    if seed is None:
        seed = recorded.get("seed", TrainConfig.model_fields["seed"].default)
    if not base or not kind:
        raise ConfigError(f"{run_cfg} does not exist: name the starting model with --base and "
                          "its kind with --kind")
    merge_models(trained, base, output, base_weight, kind, seed=seed)
    return base
