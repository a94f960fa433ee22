"""G-Rerank beyond the loss itself (which lives in :mod:`raglign.objectives.gumbel`).

* :mod:`.options` — the pydantic options of Algorithm 2 (no torch import: configs load fast);
* :mod:`.weights` — Algorithm 2, learnable per-document sampling weights for one query;
* :mod:`.report` — the mining comparison table (Recall@k / MRR with bootstrap CIs);
* :mod:`.ablation` — the Gumbel-noise ablation (the paper's Figure 4) as JSON + PNG.
"""
