"""``raglign retrieve``: first-stage retrieval of the top-k corpus passages for every query.

Dense: the corpus and the queries are embedded by an :class:`~raglign.models.encoders.Encoder`
in a Ray Data actor pool (one model per actor, loaded once), the corpus vectors go into a faiss
index (exact inner product by default; IVF or HNSW for corpora too large to scan) and each
query's top k come back with their scores. Sparse: BM25 with ``bm25s``. Either way the output
is canonical rows (:mod:`raglign.data.schema`) whose ``candidates`` are the retrieved passages in
rank order, ``score`` = the retrieval score, so every later stage (labelling, mining, training,
evaluation) reads retrieval output like any converted dataset.

Gold labels carry over from the input: a query row whose candidates include ``is_gold=True``
passages knows its gold set, and the retrieved candidates get ``is_gold`` true/false against it
(null for rows that know no gold). See :class:`GoldIndex` for how an input gold passage is found
in a corpus that uses other ids. The row's ``meta.gold_doc_ids`` keeps the full gold set, so a
gold passage that was *not* retrieved still counts as a miss in recall.

Embeddings (and the faiss index) are cached under ``OUTPUT_DIR/_cache`` keyed by the encoder,
its settings and a hash of the texts: re-running with another ``k`` or index type, or after an
interruption, does not embed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from raglign import storage
from raglign.config import JobConfig
from raglign.data.io import claim_output, parquet_files, read_file, write_rows
from raglign.data.schema import candidate, row_meta, validate_row
from raglign.errors import ConfigError, DataError
from raglign.models.rerankers import doc_text
from raglign.ray_session import ray_session

CACHE_DIR = "_cache"
SUMMARY = "_summary.json"


class RetrieveConfig(JobConfig):
    """One retrieval run: QUERIES (canonical rows) × CORPUS (doc_id, title, text) → OUTPUT."""

    job: Literal["retrieve"] = "retrieve"
    queries: str = Field(description="canonical query rows (Parquet dir or file)")
    corpus: str = Field(description="corpus Parquet dir or file: doc_id, title, text")
    output: str = Field(description="output directory (rows, _summary.json, _cache/)")
    k: int = Field(20, ge=1, description="passages retrieved per query")
    method: Literal["dense", "bm25"] = "dense"
    # dense
    encoder: str = Field("minilm-l6", description="packaged short name, local dir or hub id")
    max_length: int | None = Field(None, ge=8, description="token limit; None = the model's own")
    dtype: str | None = Field(None, description="bfloat16 / float16 / float32 (default)")
    normalize: bool | None = Field(None, description="L2-normalise vectors; None = the model's own")
    query_prefix: str = Field("", description="prepended to each query (e.g. 'query: ' for E5)")
    doc_prefix: str = Field("", description="prepended to each passage (e.g. 'passage: ')")
    index: Literal["flat", "ivf", "hnsw"] = "flat"
    ivf_nlist: int | None = Field(None, ge=1, description="IVF lists; None = ~4·sqrt(N)")
    ivf_nprobe: int = Field(32, ge=1, description="IVF lists scanned per query")
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(128, ge=1)
    actors: int = Field(1, ge=0, description="Ray Data encoder actors; 0 = embed in this process")
    batch_size: int = Field(64, ge=1, description="texts per encoder batch")
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    # sparse
    bm25_k1: float = Field(1.5, gt=0)
    bm25_b: float = Field(0.75, ge=0, le=1)
    limit: int | None = Field(None, ge=1, description="only the first N queries")

    @model_validator(mode="after")
    def _prefixes_only_for_dense(self):
        if self.method == "bm25" and (self.query_prefix or self.doc_prefix):
            raise ValueError("query_prefix/doc_prefix apply to dense retrieval only")
        return self


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

@dataclass
class Corpus:
    """The corpus as parallel lists (position = faiss/BM25 row id)."""

    doc_ids: list[str]
    titles: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.doc_ids)

    def strings(self, prefix: str = "") -> list[str]:
        """What the retriever sees per passage: ``prefix + doc_text(title, text)``."""
        return [prefix + doc_text(t, x) for t, x in zip(self.titles, self.texts)]


def read_corpus(path: str | os.PathLike) -> Corpus:
    """Read and check a corpus: ``doc_id`` and ``text`` present and non-null, ids unique.

    Errors name the file, the record (0-based within that file) and the field.
    """
    doc_ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    first_seen: dict[str, str] = {}
    for f in parquet_files(path):
        table = read_file(f)
        for col in ("doc_id", "text"):
            if col not in table.column_names:
                raise DataError(str(f), None, col, f"missing column (corpus columns: doc_id, "
                                f"title, text; found {', '.join(table.column_names)})")
        ids = table.column("doc_id").to_pylist()
        txt = table.column("text").to_pylist()
        ttl = (table.column("title").to_pylist() if "title" in table.column_names
               else [None] * len(ids))
        for i, (d, t, x) in enumerate(zip(ids, ttl, txt)):
            if not isinstance(d, str) or not d:
                raise DataError(str(f), i, "doc_id", f"expected a non-empty string, got {d!r}")
            if not isinstance(x, str):
                raise DataError(str(f), i, "text", f"expected a string, got {x!r}")
            if d in first_seen:
                raise DataError(str(f), i, "doc_id", f"duplicate doc_id {d!r} (first in "
                                f"{first_seen[d]})")
            first_seen[d] = f"{storage.name(f)}, record {i}"
            doc_ids.append(d)
            titles.append(t or "")
            texts.append(x)
    if not doc_ids:
        raise DataError(str(path), None, None, "the corpus has no documents")
    return Corpus(doc_ids, titles, texts)


def read_queries(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """Canonical rows, each validated (errors name file, record and field)."""
    rows: list[dict[str, Any]] = []
    for f in parquet_files(path):
        for i, row in enumerate(read_file(f).to_pylist()):
            validate_row(row, str(f), i)
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                return rows
    if not rows:
        raise DataError(str(path), None, None, "no query rows")
    return rows


def _norm(s: str | None) -> str:
    return " ".join((s or "").split())


class GoldIndex:
    """Finds an input row's gold passages in the corpus.

    Rule, per gold candidate (``is_gold=True``) of an input row, first that applies:

    1. its ``doc_id`` is a corpus doc_id → that document (ids are the canonical format's key);
    2. a corpus document with the same title and text (whitespace-normalised) → it;
    3. corpus documents with the same text (whitespace-normalised), whatever their title → all.

    A gold passage found by none of these is not in the corpus: it keeps its input doc_id in
    ``meta.gold_doc_ids`` (so recall counts it as a miss) and is counted in the summary.
    """

    def __init__(self, corpus: Corpus):
        self.ids = set(corpus.doc_ids)
        self.by_title_text: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.by_text: dict[str, list[str]] = defaultdict(list)
        for d, t, x in zip(corpus.doc_ids, corpus.titles, corpus.texts):
            self.by_title_text[(_norm(t), _norm(x))].append(d)
            self.by_text[_norm(x)].append(d)

    def gold_ids(self, row: Mapping[str, Any]) -> tuple[list[str] | None, int]:
        """(sorted gold doc ids, or None when the row knows no gold; how many are not in the
        corpus)."""
        golds = [c for c in row.get("candidates") or [] if c.get("is_gold") is True]
        if not golds:
            return None, 0
        found: set[str] = set()
        missing = 0
        for c in golds:
            if c["doc_id"] in self.ids:
                found.add(c["doc_id"])
                continue
            ids = (self.by_title_text.get((_norm(c.get("title")), _norm(c["text"])))
                   or self.by_text.get(_norm(c["text"])))
            if ids:
                found.update(ids)
            else:
                found.add(c["doc_id"])
                missing += 1
        return sorted(found), missing


# ---------------------------------------------------------------------------------------------
# Embedding (Ray Data actor pool, cached)
# ---------------------------------------------------------------------------------------------

class EmbedActor:
    """Ray Data callable class: loads the encoder once per actor, embeds ``text`` batches."""

    def __init__(self, encoder: str, max_length: int | None, dtype: str | None,
                 normalize: bool | None, batch_size: int, device: str):
        from raglign.models.encoders import load_encoder

        self.encoder = load_encoder(encoder, max_length=max_length, dtype=dtype, device=device)
        self.normalize, self.batch_size = normalize, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb = self.encoder.encode(list(batch["text"]), batch_size=self.batch_size,
                                  normalize=self.normalize)
        return {"idx": batch["idx"], "embedding": emb}


def _actor_kwargs(cfg: RetrieveConfig) -> dict[str, Any]:
    return dict(encoder=cfg.encoder, max_length=cfg.max_length, dtype=cfg.dtype,
                normalize=cfg.normalize, batch_size=cfg.batch_size,
                device="cuda" if cfg.gpus_per_actor > 0 else "cpu")


def embed_texts(texts: list[str], cfg: RetrieveConfig) -> np.ndarray:
    """``[len(texts), dim]`` float32 embeddings, row i for ``texts[i]``.

    With ``cfg.actors >= 1`` the texts are split into blocks and embedded by a Ray Data
    ``ActorPoolStrategy`` pool of :class:`EmbedActor` (``cpus_per_actor``/``gpus_per_actor``
    each); results come back in any order, are put in place by index and counted on a
    progress bar. ``actors=0`` embeds in this process (no Ray), the same computation.
    """
    if cfg.actors == 0:
        batch = {"idx": np.arange(len(texts)), "text": np.array(texts, dtype=object)}
        return EmbedActor(**_actor_kwargs(cfg))(batch)["embedding"]
    import ray

    from raglign.console import progress_bar
    from raglign.pipeline.shards import default_shard_rows
    from raglign.ray_session import actor_pool_map

    n = len(texts)
    table = pa.table({"idx": pa.array(np.arange(n, dtype=np.int64)), "text": pa.array(texts)})
    # Several blocks per actor so the pool stays busy and progress is visible; calls of
    # ``batch_size`` texts, fewer when that would leave actors idle (the encoder batches anyway).
    per_block = max(1, math.ceil(n / (cfg.actors * 8)))
    ds = ray.data.from_arrow([table.slice(s, per_block) for s in range(0, n, per_block)])
    ds = actor_pool_map(ds, EmbedActor, cfg.actors, cfg.ray,
                        fn_constructor_kwargs=_actor_kwargs(cfg),
                        batch_size=default_shard_rows(n, cfg.actors, cfg.batch_size),
                        batch_format="numpy", num_cpus=cfg.cpus_per_actor,
                        num_gpus=cfg.gpus_per_actor)
    out: np.ndarray | None = None
    seen = np.zeros(n, dtype=bool)
    with progress_bar(n, "[retrieve] texts embedded", unit="text") as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            emb = np.asarray(batch["embedding"], dtype=np.float32)
            if out is None:
                out = np.empty((n, emb.shape[1]), dtype=np.float32)
            out[batch["idx"]] = emb
            seen[batch["idx"]] = True
            bar.update(len(batch["idx"]))
    if out is None or not seen.all():
        raise RuntimeError(f"Ray Data returned embeddings for {int(seen.sum())} of {n} texts")
    return out


def _model_fingerprint(name: str) -> str:
    """The name plus, for a local model, its files' sizes and mtimes (a retrained model in the
    same directory must not reuse stale embeddings)."""
    from raglign.models.registry import resolve_model

    path = Path(resolve_model(name))
    if not path.is_dir():
        return name
    stats = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in path.rglob("*") if p.is_file())
    return json.dumps([name, stats])


def _cache_key(texts: list[str], cfg: RetrieveConfig, model_fp: str) -> str:
    h = hashlib.sha256()
    settings = [model_fp, cfg.max_length, cfg.dtype, cfg.normalize, len(texts)]
    h.update(json.dumps(settings).encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:20]


def _save_npy(arr: np.ndarray, path: str) -> None:
    buffer = io.BytesIO()
    np.save(buffer, arr)
    storage.write_bytes(path, buffer.getvalue())


@dataclass
class Embedded:
    """One set of embeddings and its cache key (the faiss index cache is keyed by the corpus')."""

    vectors: np.ndarray
    key: str
    from_cache: bool


def cached_embeddings(parts: Mapping[str, list[str]], cfg: RetrieveConfig,
                      model_fp: str) -> tuple[dict[str, Embedded], float]:
    """Embeddings of each named list of texts, from ``OUTPUT/_cache/{name}-{key}.npy`` or computed.

    Everything missing from the cache is embedded in ONE pass (one actor pool, one model load
    per actor) and then split and cached per name. Returns the embeddings by name and the
    seconds spent embedding.
    """
    out: dict[str, Embedded] = {}
    todo = []
    for what, texts in parts.items():
        key = _cache_key(texts, cfg, model_fp)
        path = storage.join(cfg.output, CACHE_DIR, f"{what}-{key}.npy")
        emb = np.load(io.BytesIO(storage.read_bytes(path))) if storage.is_file(path) else None
        if emb is not None and emb.shape[0] == len(texts):
            print(f"  {what}: {len(texts)} embeddings from cache {storage.name(path)}",
                  flush=True)
            out[what] = Embedded(emb, key, True)
        else:
            todo.append((what, texts, key, path))
    if not todo:
        return out, 0.0
    texts = [t for _, part, _, _ in todo for t in part]
    what = " + ".join(f"{len(part)} {name}" for name, part, _, _ in todo)
    print(f"  embedding {what} texts with {cfg.encoder} ({cfg.actors or 'no'} Ray actor(s), "
          f"batch {cfg.batch_size})", flush=True)
    t0 = time.time()
    # Ray only when there is something to embed; actors=0 embeds in this process.
    with ray_session(cfg.ray, log_dir=cfg.output) if cfg.actors else contextlib.nullcontext():
        emb = embed_texts(texts, cfg)
    seconds = time.time() - t0
    rate = len(texts) / max(seconds, 1e-9)
    print(f"  embedded {len(texts)} texts in {seconds:.1f} s ({rate:.1f}/s)", flush=True)
    start = 0
    for name, part, key, path in todo:
        vectors = emb[start:start + len(part)]
        start += len(part)
        _save_npy(vectors, path)
        out[name] = Embedded(vectors, key, False)
    return out, seconds


# ---------------------------------------------------------------------------------------------
# Indexes and search
# ---------------------------------------------------------------------------------------------

def build_index(emb: np.ndarray, kind: str = "flat", *, ivf_nlist: int | None = None,
                ivf_nprobe: int = 32, hnsw_m: int = 32, hnsw_ef_construction: int = 200,
                hnsw_ef_search: int = 128):
    """A faiss inner-product index over ``emb`` (cosine when the vectors are normalised).

    ``flat`` is exact. ``ivf`` (IndexIVFFlat) clusters the corpus into ``nlist`` lists (default
    ~4·sqrt(N), at most N/39 so k-means has 39 points per centroid) and scans ``nprobe`` of them.
    ``hnsw`` (IndexHNSWFlat) is a graph index: no training, ``efSearch`` trades recall for speed.
    """
    import faiss

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = emb.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = ivf_nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        if nlist > n:
            raise ConfigError(f"ivf_nlist={nlist} exceeds the corpus size {n}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(emb)
        index.nprobe = min(ivf_nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = hnsw_ef_construction
        index.hnsw.efSearch = hnsw_ef_search
    else:
        raise ConfigError(f"unknown index {kind!r}; use flat, ivf or hnsw")
    index.add(emb)
    return index


def search(index, queries: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(scores, corpus positions), each ``[n_queries, k]``; position -1 where fewer than k exist."""
    import faiss

    if isinstance(index, faiss.IndexHNSWFlat):
        index.hnsw.efSearch = max(index.hnsw.efSearch, k)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    scores, ids = [], []
    for s in range(0, len(queries), chunk):
        d, i = index.search(queries[s:s + chunk], k)
        scores.append(d)
        ids.append(i)
    return np.concatenate(scores), np.concatenate(ids)


def _index_for(emb: np.ndarray, cfg: RetrieveConfig, corpus_key: str):
    """The configured faiss index, read from / written to the cache (IVF training and HNSW
    construction are the slow part on large corpora)."""
    import faiss

    params = dict(kind=cfg.index)
    if cfg.index == "ivf":
        params.update(ivf_nlist=cfg.ivf_nlist, ivf_nprobe=cfg.ivf_nprobe)
    elif cfg.index == "hnsw":
        params.update(hnsw_m=cfg.hnsw_m, hnsw_ef_construction=cfg.hnsw_ef_construction,
                      hnsw_ef_search=cfg.hnsw_ef_search)
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    path = storage.join(cfg.output, CACHE_DIR, f"index-{corpus_key}-{cfg.index}-{tag}.faiss")
    if storage.is_file(path):  # (de)serialised in memory: the cache may be on s3://
        return faiss.deserialize_index(np.frombuffer(storage.read_bytes(path), dtype=np.uint8))
    kind = params.pop("kind")
    t0 = time.time()
    index = build_index(emb, kind, **params)
    print(f"  index: {kind} over {index.ntotal} vectors built in {time.time() - t0:.1f} s",
          flush=True)
    storage.write_bytes(path, faiss.serialize_index(index).tobytes())
    return index


def bm25_search(doc_strings: list[str], queries: list[str], k: int, k1: float = 1.5,
                b: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """BM25 (Lucene variant, ``bm25s``; English stopwords removed, no stemming) top k.

    Returns (scores, corpus positions) like :func:`search`. A query sharing no term with a
    passage scores it 0; when fewer than k passages match, the rest of the k are 0-score
    passages in arbitrary order, so every query still gets k candidates.
    """
    import bm25s

    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(bm25s.tokenize(doc_strings, stopwords="en", show_progress=False),
                    show_progress=False)
    q_tokens = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
    ids, scores = retriever.retrieve(q_tokens, k=min(k, len(doc_strings)), show_progress=False)
    return np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

@dataclass
class RetrieveSummary:
    """What a retrieval run did; ``str()`` is the text the CLI prints."""

    method: str
    queries: str
    corpus: str
    output: str
    rows: int = 0
    documents: int = 0
    k: int = 0
    rows_with_gold: int = 0
    gold_not_in_corpus: int = 0
    recall: dict[str, float] = field(default_factory=dict)
    embedded_texts: int = 0
    embed_seconds: float = 0.0
    from_cache: list[str] = field(default_factory=list)
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def __str__(self) -> str:
        rec = "  ".join(f"{k} {v:.3f}" for k, v in self.recall.items()) or "n/a (no gold labels)"
        lines = [f"retrieve {self.method}: {self.rows} queries x top {self.k} of "
                 f"{self.documents} documents -> {self.output} in {self.seconds:.1f} s",
                 f"  rows with gold:          {self.rows_with_gold}"
                 + (f" ({self.gold_not_in_corpus} gold passages not in the corpus)"
                    if self.gold_not_in_corpus else ""),
                 f"  gold recall:             {rec}"]
        if self.method.startswith("dense"):
            cached = f" ({', '.join(self.from_cache)} from cache)" if self.from_cache else ""
            lines.append(f"  embedded:                {self.embedded_texts} texts in "
                         f"{self.embed_seconds:.1f} s{cached}")
        return "\n".join(lines)


def output_rows(rows: list[dict[str, Any]], corpus: Corpus, scores: np.ndarray, ids: np.ndarray,
                gold: GoldIndex, retriever: str) -> tuple[list[dict[str, Any]], int, int]:
    """Rows with retrieved candidates; also (rows with gold, gold passages not in the corpus).

    The input's own candidates are replaced (they only served to find the gold set); the row's
    other fields are kept, and ``meta`` gains ``retriever`` and, when known, ``gold_doc_ids``.
    """
    out = []
    with_gold = missing_total = 0
    for row, s_row, i_row in zip(rows, scores, ids):
        gold_ids, missing = gold.gold_ids(row)
        gold_set = set(gold_ids or ())
        cands = [candidate(corpus.doc_ids[j], corpus.titles[j], corpus.texts[j], float(s),
                           None if gold_ids is None else corpus.doc_ids[j] in gold_set)
                 for s, j in zip(s_row, i_row) if j >= 0]
        meta = row_meta(row)
        meta["retriever"] = retriever
        if gold_ids is not None:
            meta["gold_doc_ids"] = gold_ids
            with_gold += 1
            missing_total += missing
        out.append({**row, "candidates": cands,
                    "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True)})
    return out, with_gold, missing_total


def gold_recall(rows: Iterable[Mapping[str, Any]], ks: Iterable[int]) -> dict[str, float]:
    """Mean Recall@k of ``meta.gold_doc_ids`` over the rows that have it (misses included)."""
    from raglign.metrics import recall_at_k

    per_k: dict[int, list[float]] = {k: [] for k in ks}
    for row in rows:
        golds = row_meta(row).get("gold_doc_ids")
        if not golds:
            continue
        ranked = [c["doc_id"] for c in row["candidates"]]
        for k in per_k:
            per_k[k].append(recall_at_k(ranked, golds, k))
    return {f"recall@{k}": float(np.mean(v)) for k, v in per_k.items() if v}


def _write_output(rows: list[dict[str, Any]], cfg: RetrieveConfig) -> list[str]:
    """Replace the run's part files (a re-run with fewer rows must not leave stale parts):
    the old summary goes first and the new one is written last by the caller, so a run killed
    in between leaves an output that readers refuse as unfinished (raglign.data.io)."""
    out = cfg.output
    storage.delete(storage.join(out, SUMMARY))
    claim_output(out, "retrieve", _fingerprint(cfg), replaceable=True)
    for old in storage.list_files(out, (".parquet",)):
        if storage.name(old).startswith("part-"):
            storage.delete(old)
    return write_rows(rows, out)


def _fingerprint(cfg: RetrieveConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude={"ray", "output", "actors", "batch_size"})


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def retrieve(cfg: RetrieveConfig) -> RetrieveSummary:
    """Run the retrieval described by ``cfg``: read, embed (Ray) or BM25, search, write."""
    t0 = time.time()
    corpus = read_corpus(cfg.corpus)
    rows = read_queries(cfg.queries, cfg.limit)
    out = cfg.output
    claim_output(out, "retrieve", _fingerprint(cfg), replaceable=True, write=False)
    k = min(cfg.k, len(corpus))
    label = "bm25" if cfg.method == "bm25" else f"dense:{cfg.encoder}:{cfg.index}"
    summary = RetrieveSummary(method=label, queries=cfg.queries, corpus=cfg.corpus,
                              output=cfg.output, rows=len(rows), documents=len(corpus), k=k)
    print(f"retrieve {label}: {len(rows)} queries, {len(corpus)} documents, top {k}", flush=True)
    questions = [r["question"] for r in rows]
    if cfg.method == "bm25":
        scores, ids = bm25_search(corpus.strings(), questions, k, cfg.bm25_k1, cfg.bm25_b)
    else:
        doc_strings = corpus.strings(cfg.doc_prefix)
        q_strings = [cfg.query_prefix + q for q in questions]
        model_fp = _model_fingerprint(cfg.encoder)
        emb, summary.embed_seconds = cached_embeddings(
            {"corpus": doc_strings, "queries": q_strings}, cfg, model_fp)
        summary.from_cache = [name for name, e in emb.items() if e.from_cache]
        summary.embedded_texts = sum(len(e.vectors) for e in emb.values() if not e.from_cache)
        index = _index_for(emb["corpus"].vectors, cfg, emb["corpus"].key)
        scores, ids = search(index, emb["queries"].vectors, k)
    result, summary.rows_with_gold, summary.gold_not_in_corpus = output_rows(
        rows, corpus, scores, ids, GoldIndex(corpus), label)
    summary.recall = gold_recall(result, sorted({x for x in (1, 5, 10, 20, 100) if x < k} | {k}))
    summary.files = _write_output(result, cfg)
    summary.seconds = time.time() - t0
    storage.write_text(storage.join(out, SUMMARY), json.dumps(summary.to_dict(), indent=2) + "\n")
    print(summary, flush=True)
    return summary
