"""The keyword a transformers model's forward takes its KV cache by.

transformers renamed ``past_key_values`` to ``cache`` during 5.x (5.25 takes both and warns on
the old name until 5.40; 5.17, the lent GPU machine's, takes only ``past_key_values`` and
swallows an unknown ``cache=`` into ``**kwargs``, so the forward would silently run without the
prefix). The document engine and the transformers generator both hand the model a cache they
built and read it back afterwards; they name the keyword through here and keep their own
reference to the cache (the forward fills it in place), so neither depends on which name the
output carries either.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=None)
def _keyword(forward_class: type) -> str:
    params = inspect.signature(forward_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model``'s forward, ``name`` its own keyword for the KV cache."""
    return {_keyword(type(model)): cache}
