"""``rationale_score``: RADIO's rationale similarity mixed with the retrieval score.

1. The LLM writes a rationale r for the question *and its gold answer* (RADIO's prompt,
   :func:`raglign.prompts.rationale_prompt`), sampled with the reference code's settings:
   temperature 0.2, top_p 1, seed 42, at most 1000 new tokens (``rationale.*``). The seed is
   made per row (:func:`raglign.signals.base.row_seed`) so a row's rationale does not depend on
   the batch it shares, and a resumed job reproduces it. The text is kept in a ``rationale``
   column.
2. s^rat_i = sim(Enc(d_i), Enc(r)) with ``rationale.similarity``:
   ``cosine`` (the paper: both embeddings L2-normalised) or ``reference`` (the reference code:
   a dot product with Enc("question. answers. rationale"), embeddings as the encoder outputs
   them). Documents are embedded as the generator reads them, "(Title: t) text".
3. s'_i = α·minmax(s^rat) + (1-α)·minmax(s^ret) within the query
   (:func:`raglign.signals.mixing.mix_scores`, α = ``rationale.alpha`` = 0.5; α = 1 is the paper's
   "w/o retrieval" ablation). Rows whose candidates lack retrieval scores use -rank instead.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, PositiveInt

from raglign.config import StrictModel
from raglign.prompts import TASK_SAMPLING, format_document
from raglign.signals.base import Generate, Labels, Signal, row_seed
from raglign.signals.items import Item
from raglign.signals.mixing import mix_scores


_DEFAULTS = TASK_SAMPLING["rationale"]  # the reference code's, stated in raglign.prompts


class RationaleOptions(StrictModel):
    """``rationale:`` RADIO's rationale generation and scoring (reference-code defaults)."""

    temperature: float = Field(_DEFAULTS["temperature"], ge=0.0)
    top_p: float = Field(_DEFAULTS["top_p"], gt=0.0, le=1.0)
    seed: int = _DEFAULTS["seed"]
    max_new_tokens: PositiveInt = _DEFAULTS["max_new_tokens"]
    similarity: Literal["cosine", "reference"] = "cosine"
    alpha: float = Field(0.5, ge=0.0, le=1.0)


def rationale_similarity(encoder, item: Item, rationale: str, mode: str,
                         batch_size: int = 32) -> np.ndarray:
    """s^rat for every candidate of ``item`` (before normalisation and mixing)."""
    docs = [format_document(t, x).strip() for t, x in item.docs]
    if mode == "cosine":
        emb = encoder.encode([rationale] + docs, batch_size=batch_size, normalize=True)
    else:
        query = f"{item.question}. {', '.join(item.row['answers'])}. {rationale}"
        emb = encoder.encode([query] + docs, batch_size=batch_size, normalize=None)
    return emb[1:].astype(np.float64) @ emb[0].astype(np.float64)


class Rationale(Signal):
    name = "rationale_score"
    columns = {"rationale": pa.string()}
    summary = "RADIO: α·minmax(sim(Enc(d_i), Enc(rationale))) + (1-α)·minmax(retrieval score)"
    higher_is_better = True  # closer to the rationale (and higher in retrieval)

    def needs(self, cfg):
        return {"generator", "encoder"}

    def requests(self, item, cfg):
        r = cfg.rationale
        return [Generate("rationale", item.question, answer=item.answer,
                         max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                         top_p=r.top_p, seed=row_seed(r.seed, item.row["id"]))]

    def compute(self, item, results, models, cfg):
        rationale = results[self.requests(item, cfg)[0]].strip()
        sim = rationale_similarity(models.encoder, item, rationale, cfg.rationale.similarity)
        mixed = mix_scores(sim, item.retrieval_scores, cfg.rationale.alpha)
        return Labels([float(v) for v in mixed], columns={"rationale": rationale},
                      counts={"rationale_empty": int(not rationale)})
