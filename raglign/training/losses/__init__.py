"""The losses of ``raglign train``, one module per kind, each a :class:`raglign.training.loss.Loss`
registered by one line in ``raglign.training_config.OBJECTIVES``. The maths they call are pure
functions in :mod:`raglign.objectives`, tested there without a reranker."""
