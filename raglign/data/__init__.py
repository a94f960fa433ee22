"""Canonical data: the schema, Parquet I/O, loaders for public formats, corpora and conversion.

Programmatic entry points (the ``raglign data`` CLI is a thin layer over them)::

    from raglign.data import convert, load_records, convert_corpus, load_corpus
    summary = convert("hotpotqa", "hotpotqa_train.json", "out/hotpotqa")
    rows = list(load_records("nq-open", "NQ-open.dev.jsonl"))
"""

from raglign.data.convert import convert
from raglign.data.corpus import CORPUS_FORMATS, convert_corpus, iter_documents, load_corpus
from raglign.data.loaders import FORMATS, Result, iter_results, load_records
from raglign.data.summary import CorpusSummary, Summary

__all__ = ["CORPUS_FORMATS", "FORMATS", "CorpusSummary", "Result", "Summary", "convert",
           "convert_corpus", "iter_documents", "iter_results", "load_corpus", "load_records"]
