"""Labelling signals, one module each, registered by the candidate field they write.

:data:`SIGNALS` is the table ``LabelConfig.signals`` is validated against: adding a signal is
one module with a :class:`~raglign.signals.base.Signal` subclass (its ``name``, its ranking
direction ``higher_is_better``, where it can run) and its options class, plus one line here
(and its options block in :class:`~raglign.signals.settings.SignalSettings`). :mod:`raglign.signals.ranking` reads the
directions from this table; it is not imported here, since it imports this table.
"""

from __future__ import annotations

from raglign.signals.answer_logprob import AnswerLogprob
from raglign.signals.answer_quality import AnswerQuality
from raglign.signals.attention import Attention
from raglign.signals.base import Generate, Labels, Models, Score, Signal
from raglign.signals.dpa import DPA
from raglign.signals.gumbel_weight import GumbelWeight
from raglign.signals.items import Item
from raglign.signals.judge import Judge
from raglign.signals.loo import LeaveOneOut
from raglign.signals.rationale import Rationale

SIGNALS: dict[str, Signal] = {s.name: s for s in (
    Rationale(), AnswerLogprob(), LeaveOneOut(), Attention(), Judge(), AnswerQuality(), DPA(),
    GumbelWeight())}

__all__ = ["SIGNALS", "Generate", "Item", "Labels", "Models", "Score", "Signal"]
