"""What the signals read from a label recipe: the context and each signal's options block.

Each block's class lives in its signal's module (``rationale:`` in
:mod:`raglign.signals.rationale`, ``loo:`` in :mod:`raglign.signals.loo` …); this class only
composes them under their recipe keys. The labelling job's ``LabelConfig`` extends it with
where and how the job runs, so signals are written against this layer's own type and never
import the job above them. A new signal with options adds its block here.
"""

from __future__ import annotations

from typing import Literal

from raglign.config import StrictModel
from raglign.gumbel.options import SamplingWeightOptions
from raglign.signals.answer_quality import AnswerQualityOptions
from raglign.signals.dpa import DpaOptions
from raglign.signals.judge import JudgeOptions
from raglign.signals.loo import LooOptions
from raglign.signals.rationale import RationaleOptions


class SignalSettings(StrictModel):
    """``context`` (how likelihood signals read documents: one shared parallel prefill, or
    ordinary concatenated prompts) and the signals' options blocks, under their recipe keys."""

    context: Literal["parallel", "concat"] = "parallel"
    rationale: RationaleOptions = RationaleOptions()
    loo: LooOptions = LooOptions()
    judge: JudgeOptions = JudgeOptions()
    answer_quality: AnswerQualityOptions = AnswerQualityOptions()
    dpa: DpaOptions = DpaOptions()
    gumbel: SamplingWeightOptions = SamplingWeightOptions()
