"""raglign: align a RAG pipeline's reranker with what its generator LLM needs.

The package is layered so that data flows one way: ``data`` (canonical schema and
loaders) → ``models`` (generators, rerankers, encoders) → ``engine`` (parallel-prefill
answer likelihood) → ``signals`` / ``mining`` / ``objectives`` (plain torch maths) →
``pipeline`` (Ray Data, Ray Train, Ray Tune at the edges) → ``evaluate`` → ``cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("raglign")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
