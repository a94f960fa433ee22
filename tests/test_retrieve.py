"""Retrieval: faiss against numpy brute force, BM25 on exact terms, gold propagation, the Ray Data
embedding path against a direct encode, the embedding cache, the CLI and the job YAML."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raglign.data.io import read_rows, write_rows, write_table_atomic
from raglign.data.schema import CORPUS_SCHEMA, candidate, make_row, row_meta, validate_row
from raglign.errors import DataError
from raglign.pipeline.retrieve import (
    CACHE_DIR,
    Corpus,
    GoldIndex,
    RetrieveConfig,
    build_index,
    read_corpus,
    retrieve,
    search,
)

REPO = Path(__file__).resolve().parents[1]

DOCS = [  # doc_id, title, text — each passage has one rare, distinctive term
    ("d0", "Axolotl", "The axolotl is a neotenic salamander native to lakes near Mexico City."),
    ("d1", "Zeppelin", "A zeppelin is a rigid airship pioneered by Ferdinand von Zeppelin."),
    ("d2", "Quasar", "A quasar is an extremely luminous active galactic nucleus."),
    ("d3", "Marimba", "The marimba is a percussion instrument with wooden bars struck by mallets."),
    ("d4", "Fjord", "A fjord is a long, narrow inlet with steep sides created by a glacier."),
    ("d5", "Saffron", "Saffron is a spice derived from the flower of the crocus plant."),
]


def _write_corpus(path: Path, docs=DOCS) -> Path:
    table = pa.Table.from_pylist([{"doc_id": d, "title": t, "text": x} for d, t, x in docs],
                                 schema=CORPUS_SCHEMA)
    write_table_atomic(table, path / "part-00000.parquet")
    return path


def _queries() -> list[dict]:
    """Rows whose gold is known four ways: by corpus id, by text under another id, not at all,
    and a gold passage the corpus lacks."""
    return [
        make_row("q0", "which salamander is an axolotl", ["salamander"],
                 [candidate("d0", "Axolotl", DOCS[0][2], is_gold=True),
                  candidate("d5", "Saffron", DOCS[5][2], is_gold=False)]),
        make_row("q1", "who pioneered the zeppelin airship", ["Ferdinand von Zeppelin"],
                 [candidate("other-17", "Zeppelin", "  " + DOCS[1][2].replace(" ", "  "),
                            is_gold=True)]),
        make_row("q2", "what is a quasar", ["galactic nucleus"]),
        make_row("q3", "what instrument has wooden bars marimba", ["marimba"],
                 [candidate("lost", "Nowhere", "a passage that is not in the corpus", is_gold=True),
                  candidate("d3", "Marimba", DOCS[3][2], is_gold=True)]),
    ]


@pytest.fixture
def inputs(tmp_path):
    corpus = _write_corpus(tmp_path / "corpus")
    queries = tmp_path / "queries"
    write_rows(_queries(), queries)
    return queries, corpus


def test_faiss_indexes_match_numpy_brute_force():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(400, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = rng.normal(size=(25, 16)).astype(np.float32)
    sims = queries @ docs.T
    ref_ids = np.argsort(-sims, axis=1)[:, :10]
    ref_scores = np.take_along_axis(sims, ref_ids, axis=1)

    scores, ids = search(build_index(docs, "flat"), queries, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # IVF scanning every list is exact too; HNSW is approximate but near-exact at this size
    ivf_scores, ivf_ids = search(build_index(docs, "ivf", ivf_nlist=8, ivf_nprobe=8), queries, 10)
    np.testing.assert_array_equal(ivf_ids, ref_ids)
    _, hnsw_ids = search(build_index(docs, "hnsw", hnsw_m=16), queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw_ids, ref_ids)])
    assert overlap >= 0.95
    # asking for more than the corpus holds pads with -1
    _, few = search(build_index(docs[:3], "flat"), queries[:1], 5)
    assert list(few[0][3:]) == [-1, -1]


def test_gold_index_matches_by_id_then_title_text_then_text():
    corpus = Corpus(["a", "b", "c", "c2"], ["T", "U", "V", "W"],
                    ["alpha text", "beta text", "gamma text", "gamma text"])
    gold = GoldIndex(corpus)
    row = make_row("r", "q", [], [candidate("a", "whatever", "different", is_gold=True)])
    assert gold.gold_ids(row) == (["a"], 0)
    row = make_row("r", "q", [], [candidate("x", " U ", "beta  text", is_gold=True)])
    assert gold.gold_ids(row) == (["b"], 0)
    row = make_row("r", "q", [], [candidate("x", "other title", "gamma text", is_gold=True)])
    assert gold.gold_ids(row) == (["c", "c2"], 0)  # text alone: every copy is gold
    row = make_row("r", "q", [], [candidate("x", "V", "gamma text", is_gold=True)])
    assert gold.gold_ids(row) == (["c"], 0)  # title + text picks the one copy
    row = make_row("r", "q", [], [candidate("zz", "", "nothing like it", is_gold=True)])
    assert gold.gold_ids(row) == (["zz"], 1)
    row = make_row("r", "q", [], [candidate("a", "T", "alpha text", is_gold=False)])
    assert gold.gold_ids(row) == (None, 0)


def test_bm25_retrieves_exact_terms_and_propagates_gold(inputs, tmp_path):
    queries, corpus = inputs
    out = tmp_path / "out"
    summary = retrieve(RetrieveConfig(queries=str(queries), corpus=str(corpus), output=str(out),
                                      method="bm25", k=3))
    rows = {r["id"]: r for r in read_rows(out)}
    for i, row in enumerate(rows.values()):
        validate_row(row, str(out), i)
    assert [rows[q]["candidates"][0]["doc_id"] for q in ("q0", "q1", "q2", "q3")] == \
        ["d0", "d1", "d2", "d3"]
    assert all(len(r["candidates"]) == 3 for r in rows.values())
    scores = [c["score"] for c in rows["q0"]["candidates"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    # gold: by id (q0), by text under another id (q1), unknown (q2), partly missing (q3)
    assert [c["is_gold"] for c in rows["q0"]["candidates"]] == [True, False, False]
    assert [c["is_gold"] for c in rows["q1"]["candidates"]] == [True, False, False]
    assert [c["is_gold"] for c in rows["q2"]["candidates"]] == [None, None, None]
    assert row_meta(rows["q1"])["gold_doc_ids"] == ["d1"]
    assert "gold_doc_ids" not in row_meta(rows["q2"])
    assert row_meta(rows["q3"])["gold_doc_ids"] == ["d3", "lost"]
    assert row_meta(rows["q0"])["retriever"] == "bm25"
    assert (summary.rows, summary.rows_with_gold, summary.gold_not_in_corpus) == (4, 3, 1)
    # q3's "lost" gold can never be retrieved: recall 0.5 there, 1.0 for q0 and q1
    assert summary.recall["recall@1"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert json.loads((out / "_summary.json").read_text())["rows_with_gold"] == 3


def test_ray_data_embeddings_equal_direct_encode_and_are_cached(inputs, tmp_path, tiny_bert_dir,
                                                                ray_local):
    from raglign.models.encoders import load_encoder

    queries, corpus = inputs
    out = tmp_path / "out"
    cfg = RetrieveConfig(queries=str(queries), corpus=str(corpus), output=str(out),
                         encoder=str(tiny_bert_dir), k=4, actors=1, batch_size=2)
    first = retrieve(cfg)
    assert first.from_cache == [] and first.embedded_texts == len(DOCS) + 4

    enc = load_encoder(str(tiny_bert_dir), device="cpu")
    docs = read_corpus(corpus).strings()
    cached = {p.name.split("-")[0]: np.load(p) for p in (out / CACHE_DIR).glob("*.npy")}
    np.testing.assert_allclose(cached["corpus"], enc.encode(docs), atol=1e-5)
    q_emb = enc.encode([r["question"] for r in _queries()])
    np.testing.assert_allclose(cached["queries"], q_emb, atol=1e-5)

    # the written ranking is the brute-force top 4 of those embeddings
    sims = q_emb @ enc.encode(docs).T
    rows = read_rows(out)
    for row, s in zip(rows, sims):
        ranked = [c["doc_id"] for c in row["candidates"]]
        assert ranked == [DOCS[j][0] for j in np.argsort(-s)[:4]]
        np.testing.assert_allclose([c["score"] for c in row["candidates"]], np.sort(s)[::-1][:4],
                                   atol=1e-5)

    # a re-run with another k reuses both embedding files: nothing is embedded again
    again = retrieve(cfg.model_copy(update={"k": 2}))
    assert again.from_cache == ["corpus", "queries"] and again.embedded_texts == 0
    assert [[c["doc_id"] for c in r["candidates"]] for r in read_rows(out)] == \
        [[c["doc_id"] for c in r["candidates"][:2]] for r in rows]
    assert len(list(out.glob("part-*.parquet"))) == 1


def test_cli_and_job_yaml(inputs, tmp_path, capsys):
    from raglign.cli import main
    from raglign.config import load_job

    queries, corpus = inputs
    assert main(["retrieve", str(queries), str(corpus), str(tmp_path / "cli"), "--bm25",
                 "--k", "2"]) == 0
    assert "retrieve bm25: 4 queries x top 2 of 6 documents" in capsys.readouterr().out
    assert [len(r["candidates"]) for r in read_rows(tmp_path / "cli")] == [2, 2, 2, 2]

    job = load_job(REPO / "jobs" / "retrieve_nq_oracle.yaml")
    assert isinstance(job, RetrieveConfig) and job.k == 20 and job.method == "dense"
    yaml = tmp_path / "job.yaml"
    yaml.write_text(f"job: retrieve\nqueries: {queries}\ncorpus: {corpus}\n"
                    f"output: {tmp_path / 'yaml'}\nmethod: bm25\nk: 5\n")
    assert main(["retrieve", "--config", str(yaml), "--k", "1"]) == 0  # flags override the YAML
    assert [len(r["candidates"]) for r in read_rows(tmp_path / "yaml")] == [1, 1, 1, 1]
    assert main(["retrieve", "--config", str(yaml), "--k", "0"]) == 2
    assert "k: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_bad_corpus_is_reported(inputs, tmp_path):
    queries, _ = inputs
    dup = _write_corpus(tmp_path / "dup", DOCS + [("d2", "Again", "duplicate id")])
    with pytest.raises(DataError, match=r"record 6, field 'doc_id': duplicate doc_id 'd2'"):
        read_corpus(dup)
    bad = tmp_path / "bad"
    write_table_atomic(pa.table({"doc_id": ["a"], "body": ["x"]}), bad / "part-00000.parquet")
    with pytest.raises(DataError, match=r"part-00000.parquet, field 'text': missing column"):
        retrieve(RetrieveConfig(queries=str(queries), corpus=str(bad), output=str(tmp_path / "o"),
                                method="bm25"))


@pytest.mark.integration
def test_real_minilm_dense_retrieval_finds_paraphrased_passages(inputs, tmp_path):
    queries, corpus = inputs
    paraphrased = tmp_path / "para"
    write_rows([make_row("p0", "spice that comes from crocus flowers", []),
                make_row("p1", "ice-carved narrow sea inlet", []),
                make_row("p2", "luminous core of a distant galaxy", [])], paraphrased)
    retrieve(RetrieveConfig(queries=str(paraphrased), corpus=str(corpus),
                            output=str(tmp_path / "o"), actors=0, k=3))
    assert [r["candidates"][0]["doc_id"] for r in read_rows(tmp_path / "o")] == ["d5", "d4", "d2"]
