"""Every loader against the real shared data (exact counts) and hand-written public-format fixtures."""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path

import pytest

from raglign.data import load_records
from raglign.data.loaders.mmlu import SUBJECT_CATEGORY
from raglign.data.schema import row_meta

FIXTURES = Path(__file__).parent / "fixtures"


def test_hotpotqa_real_counts_and_gold_match_supporting_facts(shared_data):
    path = shared_data / "hotpotqa" / "hotpotqa_train.json"
    raw = json.loads(path.read_text())
    rows = list(load_records("hotpotqa", path))
    assert len(rows) == 100
    assert collections.Counter(len(r["candidates"]) for r in rows) == {10: 99, 4: 1}
    for r, src in zip(rows, raw):
        assert r["id"] == src["_id"] and r["answers"] == [src["answer"]]
        gold = {t for t, _ in src["supporting_facts"]}
        assert [c["doc_id"] for c in r["candidates"] if c["is_gold"]] == \
            [t for t, _ in src["context"] if t in gold]
        assert sum(c["is_gold"] for c in r["candidates"]) == 2
        assert [c["text"] for c in r["candidates"]] == ["".join(s) for _, s in src["context"]]
        meta = row_meta(r)
        assert (meta["type"], meta["level"]) == (src["type"], src["level"])


def test_hotpotqa_fullwiki_row_without_context_or_facts(tmp_path):
    p = tmp_path / "test_fullwiki.json"
    p.write_text(json.dumps([{"_id": "a1", "question": "Who?", "type": "bridge", "level": "hard"}]))
    (row,) = load_records("hotpotqa", p)
    assert row["candidates"] == [] and row["answers"] == []


def test_2wiki_fixture(tmp_path):
    rows = list(load_records("2wiki", FIXTURES / "2wiki_dev_sample.json"))
    assert [len(r["candidates"]) for r in rows] == [3, 2]
    assert [c["is_gold"] for c in rows[0]["candidates"]] == [True, True, False]
    assert rows[0]["answers"] == ["Andrzej Żuławski"]
    meta = row_meta(rows[0])
    assert meta["type"] == "compositional" and meta["evidences"][1][1] == "father"
    assert meta["entity_ids"] == "Q7208455_Q8061015"  # unmapped fields are kept, not dropped


@pytest.mark.parametrize("name", ["musique_ans_dev_sample.jsonl", "musique_ans_dev_sample.json"])
def test_musique_fixture_jsonl_and_json_list(name):
    rows = list(load_records("musique", FIXTURES / name))
    assert [r["id"] for r in rows] == ["2hop__153573_109006", "2hop__5274_25576"]
    first, second = rows
    assert first["answers"] == ["Bolinas, California", "Bolinas"]  # answer + aliases, deduplicated
    assert [c["is_gold"] for c in first["candidates"]] == [False, True, True]
    assert len({c["doc_id"] for c in first["candidates"]}) == 3  # two "Harmony Korine" paragraphs
    m1, m2 = row_meta(first), row_meta(second)
    assert m1["answerable"] is True and m2["answerable"] is False
    assert m1["question_decomposition"][1]["paragraph_support_idx"] == 2
    # candidates are put in idx order and meta.paragraph_idx maps them back
    assert m2["paragraph_idx"] == [0, 1]
    assert [c["title"] for c in second["candidates"]] == ["Chad Basin", "Lake Chad"]


def test_musique_jsonl_and_list_give_identical_rows():
    a = list(load_records("musique", FIXTURES / "musique_ans_dev_sample.jsonl"))
    b = list(load_records("musique", FIXTURES / "musique_ans_dev_sample.json"))
    assert a == b


def test_nq_open_real(shared_data):
    path = shared_data / "nq_open" / "NQ-open.dev.jsonl"
    rows = list(load_records("nq-open", path))
    assert len(rows) == 3610
    assert all(r["candidates"] == [] for r in rows)
    first = json.loads(path.open().readline())
    assert rows[0]["question"] == first["question"] and rows[0]["answers"] == first["answer"]
    assert len({r["id"] for r in rows}) == 3610


def test_dpr_nq_oracle_real_one_gold_each_and_ids_join_nq_open(shared_data):
    path = shared_data / "nq_oracle" / "nq-open-oracle.jsonl.gz"
    rows = list(load_records("dpr", path))
    assert len(rows) == 2655
    assert all(len(r["candidates"]) == 1 and r["candidates"][0]["is_gold"] is True for r in rows)
    first = json.loads(gzip.open(path, "rt").readline())
    c = rows[0]["candidates"][0]
    assert (c["title"], c["text"], c["has_answer"]) == (first["ctxs"][0]["title"],
                                                        first["ctxs"][0]["text"], True)
    assert "nq_annotated_gold" in row_meta(rows[0])
    nq = {r["question"]: r["id"] for r in load_records("nq-open", shared_data / "nq_open" /
                                                      "NQ-open.dev.jsonl")}
    shared = [r for r in rows if r["question"] in nq]
    assert len(shared) == 2655 and all(nq[r["question"]] == r["id"] for r in shared)


def test_dpr_json_list_with_ids_string_scores_and_unknown_gold(tmp_path):
    p = tmp_path / "retrieved.json"
    p.write_text(json.dumps([{"id": 7, "question": "q?", "answer": "a",
                              "ctxs": [{"id": "d1", "title": "T", "text": "x", "score": "83.5"},
                                       {"title": "U", "text": "y", "score": 1, "isgold": False}]}]))
    (row,) = load_records("dpr", p)
    assert row["id"] == "7" and row["answers"] == ["a"]
    c0, c1 = row["candidates"]
    assert (c0["doc_id"], c0["score"], c0["is_gold"]) == ("d1", 83.5, None)
    assert len(c1["doc_id"]) == 16 and (c1["score"], c1["is_gold"]) == (1.0, False)


def test_flashrag_real(shared_data):
    path = shared_data / "flashrag" / "nq_test_16.jsonl"
    rows = list(load_records("flashrag", path))
    assert len(rows) == 17  # test_0 … test_16
    assert rows[2]["id"] == "test_2" and rows[2]["answers"] == ["Olivia", "MFSK"]


def test_flashrag_multiple_choice_index_becomes_letter(tmp_path):
    p = tmp_path / "mc.jsonl"
    p.write_text(json.dumps({"id": "m1", "question": "2+2?", "golden_answers": [2],
                             "choices": ["3", "5", "4"], "metadata": {"subject": "math"}}) + "\n")
    (row,) = load_records("flashrag", p)
    assert row["answers"] == ["C"] and row["choices"] == ["3", "5", "4"]
    assert row_meta(row)["subject"] == "math"


def test_mmlu_dev_real_categories(shared_data):
    rows = list(load_records("mmlu", shared_data / "mmlu" / "dev"))
    assert len(rows) == 285
    by_subject = collections.Counter(row_meta(r)["subject"] for r in rows)
    assert len(by_subject) == 57 and set(by_subject.values()) == {5}
    cats = {row_meta(r)["subject"]: row_meta(r)["category"] for r in rows}
    assert cats["abstract_algebra"] == "STEM" and cats["high_school_european_history"] == "Humanities"
    assert cats["econometrics"] == "Social Sciences" and cats["clinical_knowledge"] == "Other"
    assert cats["professional_law"] == "Humanities" and cats["public_relations"] == "Social Sciences"
    assert collections.Counter(SUBJECT_CATEGORY.values()) == \
        {"STEM": 18, "Humanities": 13, "Social Sciences": 12, "Other": 14}
    r0 = rows[0]
    assert r0["id"] == "abstract_algebra_dev_1" and r0["answers"] == ["B"]
    assert r0["choices"] == ["0", "1", "2", "3"] and row_meta(r0)["split"] == "dev"


def test_mmlu_split_selects_files_from_root(shared_data):
    rows = list(load_records("mmlu", shared_data / "mmlu", split="val"))
    assert len(rows) == 1531 and {row_meta(r)["split"] for r in rows} == {"val"}


def test_split_is_recorded_in_meta_for_any_format():
    rows = list(load_records("2wiki", FIXTURES / "2wiki_dev_sample.json", split="dev"))
    assert {row_meta(r)["split"] for r in rows} == {"dev"}
