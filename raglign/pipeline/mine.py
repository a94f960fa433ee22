"""``raglign mine``: labelled candidates → training data for the reranker trainer.

Two outputs, both through :mod:`raglign.mining` (the maths lives there; this module is the job):

* **groups** (default): RADIO's "top-k shifted by N" — rank by ``signal`` (optionally mixed with
  the retrieval score by ``alpha``), positive = rank 0, ``m`` negatives from rank positions ``>= n``
  (or the reference code's ``fixed_ranks`` 3,4,6,9,13,18), sampled with a per-row seed shared by
  all methods. Rows: ``{id, question, docs: [positive, *negatives], labels: [1, 0, …],
  negative_ranks, signal, alpha}`` — what the InfoNCE objective reads.
* **soft targets** (``targets: pdist | loop | adist | replug``): softmax(±field / T) over the
  first ``k`` candidates. Rows: ``{id, question, docs, target, method, temperature}`` — what
  the ``kl`` objective reads.
* **LM log-probabilities** (``lm_logprobs: true``): each of the first ``k`` candidates' labelled
  ``answer_logprob`` as it is. Rows: ``{id, question, docs, lm_logprob, signal}`` — what the
  ``emdr`` and ``replug`` objectives read.

Groups rank each signal in the direction it declares (:mod:`raglign.signals.ranking`, the
definition ``raglign eval --rank-by`` and ``raglign signals-eval`` use too): ``loo_logprob``
lowest first, since a document whose removal lowers the answer's likelihood most is the most
useful; ``descending`` in a job YAML overrides it. Mining is light arithmetic, so it runs in this
process; the input is read once. Output (a directory or storage prefix): ``_manifest.json``
first, before any work (:func:`raglign.data.io.claim_output`: an output holding another job's
rows, or this job's with another configuration, is refused), then ``part-00000.parquet``
(atomic), ``_rejects.jsonl`` (rows too short for a group, with the reason) and
``_summary.json`` last, which marks the output finished.
"""

from __future__ import annotations

import json
from typing import Literal

import pyarrow as pa
from pydantic import Field, PositiveInt, model_validator

from raglign import storage
from raglign.config import JobConfig
from raglign.data.io import SUMMARY, claim_output, read_rows, write_table_atomic
from raglign.errors import ConfigError
from raglign.mining import (
    LM_LOGPROB_FIELD,
    TARGETS,
    flatten_group,
    mine_groups,
    mine_lm_logprobs,
    mine_targets,
)


class MineConfig(JobConfig):
    """Groups (``signal``), soft targets (``targets``) or LM log-probability rows
    (``lm_logprobs``) from a labelled directory."""

    job: Literal["mine"] = "mine"
    input: str
    output: str
    signal: str | None = None
    n: PositiveInt = 3
    m: PositiveInt | None = None
    seed: int = 42
    fixed_ranks: list[int] | None = None
    alpha: float | None = Field(None, ge=0.0, le=1.0)
    descending: bool | None = Field(None, description="rank groups highest first (true) or "
                                    "lowest first (false); default: the signal's declared "
                                    "direction (raglign.signals.ranking)")
    targets: Literal["pdist", "loop", "adist", "replug"] | None = None
    lm_logprobs: bool = False  # EMDR / REPLUG rows: raw answer_logprob of the first k candidates
    temperature: float | None = Field(None, gt=0)
    k: PositiveInt | None = None
    limit: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_mode(self):
        if (self.signal is not None) + (self.targets is not None) + self.lm_logprobs != 1:
            raise ValueError("give exactly one of signal (training groups), targets "
                             f"({' | '.join(TARGETS)}: soft targets) or lm_logprobs "
                             "(EMDR / REPLUG rows)")
        if not self.signal and (self.fixed_ranks or self.alpha is not None or self.m):
            raise ValueError("n/m/fixed_ranks/alpha apply to groups (signal), not to targets "
                             "or lm_logprobs")
        if self.signal and (self.temperature is not None or self.k is not None):
            raise ValueError("temperature/k apply to soft targets (targets), not to groups")
        if self.lm_logprobs and self.temperature is not None:
            raise ValueError("temperature applies to soft targets; lm_logprobs writes the raw "
                             "log-probabilities (the objective's beta / temperature apply later)")
        return self


def run_mine(cfg: MineConfig, progress=print) -> dict:
    """Write groups or soft targets for ``cfg.input`` into ``cfg.output``; returns the summary."""
    rows = read_rows(cfg.input, limit=cfg.limit)
    claim_output(cfg.output, "mine", cfg.model_dump(mode="json", exclude={"ray", "output"}))
    source = str(cfg.input)
    if cfg.signal:
        groups, rejects = mine_groups(rows, cfg.signal, n=cfg.n, m=cfg.m, seed=cfg.seed,
                                      fixed_ranks=cfg.fixed_ranks, alpha=cfg.alpha,
                                      descending=cfg.descending, source=source)
        records = [{**flatten_group(g), "negative_ranks": g["negative_ranks"],
                    "signal": g["signal"], "alpha": g["alpha"]} for g in groups]
        kind = f"groups by {cfg.signal}"
    elif cfg.targets:
        records, rejects = mine_targets(rows, cfg.targets, temperature=cfg.temperature, k=cfg.k,
                                        source=source)
        kind = f"{cfg.targets} soft targets"
    else:
        records, rejects = mine_lm_logprobs(rows, k=cfg.k, source=source)
        kind = f"lm_logprob rows (from {LM_LOGPROB_FIELD})"
    out = cfg.output
    if not records:
        raise ConfigError(f"no {kind} could be mined from {cfg.input}: all {len(rows)} rows were "
                          f"rejected (first reason: {rejects[0]['reason'] if rejects else '-'})")
    write_table_atomic(pa.Table.from_pylist(records), storage.join(out, "part-00000.parquet"))
    storage.write_text(storage.join(out, "_rejects.jsonl"),
                       "".join(json.dumps(r) + "\n" for r in rejects))
    summary = {"job": "mine",
               "kind": "groups" if cfg.signal else "targets" if cfg.targets else "lm_logprobs",
               "signal": cfg.signal, "targets": cfg.targets, "rows_in": len(rows),
               "records": len(records), "rows_rejected": len(rejects),
               "config": cfg.model_dump(mode="json", exclude={"ray"})}
    storage.write_text(storage.join(out, SUMMARY), json.dumps(summary, indent=2) + "\n")
    progress(f"[mine] {len(records)} {kind} from {len(rows)} rows, {len(rejects)} rejected "
             f"-> {out}")
    return summary

