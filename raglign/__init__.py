"""raglign: align a RAG pipeline's reranker with what its generator LLM needs.

The package is layered and imports only point down: ``engine`` (parallel-prefill answer
likelihood), ``models`` (generators, rerankers, encoders), ``objectives`` (losses), ``data``
(canonical schema and loaders) and ``metrics`` below ``signals``, below ``mining`` and
``evaluate``, below ``pipeline`` (Ray Data and Ray Train at the edges), below ``cli``. The rule
is an import-linter contract in pyproject.toml, checked by tests/test_layers.py; see
docs/architecture.md.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("raglign")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
