"""The parts of reranker training that need no Ray: what ``raglign train``'s Ray Train loop
(:mod:`raglign.pipeline.train_loop`) and its driver (:mod:`raglign.pipeline.train`) put together.

* :mod:`.loss` — the :class:`~.loss.Loss` every objective implements and :data:`~.loss.LOSSES`,
  the objectives by name, loaded from the registry ``raglign.training_config.OBJECTIVES``;
* :mod:`.losses` — one module per kind of loss: :mod:`~.losses.score` (the losses of mined rows'
  per-document values), :mod:`~.losses.gumbel` (G-Rerank), :mod:`~.losses.rrpo` (RRPO);
* :mod:`.tables` — mined training rows, validated, as one Arrow table;
* :mod:`.batches` — the global data order and each worker's padded micro-batches;
* :mod:`.reranker` — the reranker every worker builds identically, as DDP sees it;
* :mod:`.checkpoint` — a checkpoint's files: save, restore, slim;
* :mod:`.export`, :mod:`.model_card`, :mod:`.loss_curve` — what a finished run leaves behind.

Kept apart from the pipeline so that each piece is read and tested without a cluster, and so
that an objective touches none of them: it is one module in :mod:`.losses` and one line in the
registry. Nothing here imports Ray (import-linter's ``ray-at-the-edges`` contract).
"""
