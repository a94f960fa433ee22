"""``raglign data convert|corpus|show`` through ``raglign.cli.main``, corpora, and the hf loader."""

from __future__ import annotations

import json
from pathlib import Path

from raglign.cli import main
from raglign.data import load_corpus, load_records
from raglign.data.io import read_rows, read_table
from raglign.data.schema import CORPUS_SCHEMA, row_meta

FIXTURES = Path(__file__).parent / "fixtures"


def test_convert_hotpotqa_prints_and_writes_summary(shared_data, tmp_path, capsys):
    out = tmp_path / "hp"
    rc = main(["data", "convert", "--format", "hotpotqa",
               str(shared_data / "hotpotqa" / "hotpotqa_train.json"), str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "rows:                    100" in text and "min 4  mean 9.94  max 10" in text
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["rows"], summary["rows_with_gold"], summary["rejected"]) == (100, 100, 0)
    assert (summary["candidates_min"], summary["candidates_mean"], summary["candidates_max"]) == \
        (4, 9.94, 10)
    assert read_table(out).num_rows == 100


def test_convert_limit_and_overwrite_removes_old_parts(tmp_path, capsys):
    out = tmp_path / "out"
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"question": f"q{i}", "answer": [str(i)]}) + "\n"
                           for i in range(30)))
    from raglign.data import convert
    convert("nq-open", big, out, rows_per_file=10)
    assert len(list(out.glob("part-*.parquet"))) == 3
    rc = main(["data", "convert", "--format", "musique", "--limit", "1",
               str(FIXTURES / "musique_ans_dev_sample.jsonl"), str(out)])
    assert rc == 0
    assert "replaced 3 part file(s)" in capsys.readouterr().out
    rows = read_rows(out)
    assert [r["id"] for r in rows] == ["2hop__153573_109006"]
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.json", "_summary.json",
                                                     "part-00000.parquet"]


def test_cli_data_error_exits_2_with_message(tmp_path, capsys):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": 5}) + "\n")
    rc = main(["data", "convert", "--format", "nq-open", str(p), str(tmp_path / "o")])
    assert rc == 2
    assert capsys.readouterr().err.strip() == (
        f"raglign: error: {p}, record 1, field 'answer': expected a list of strings, got a number"
        "\n  pass --skip-invalid (skip_invalid=True) to write bad records to _rejects.jsonl with "
        "their reasons and convert the rest")


def test_cli_skip_invalid_counts_rejects(tmp_path, capsys):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q", "answer": ["a"]}\nnot json\n')
    rc = main(["data", "convert", "--format", "nq-open", "--skip-invalid", str(p), str(tmp_path / "o")])
    assert rc == 0
    assert "rejected:                1 (see _rejects.jsonl)" in capsys.readouterr().out


def test_show_prints_question_candidates_and_extra_fields(shared_data, tmp_path, capsys):
    out = tmp_path / "oracle"
    main(["data", "convert", "--format", "dpr", "--limit", "2",
          str(shared_data / "nq_oracle" / "nq-open-oracle.jsonl.gz"), str(out)])
    capsys.readouterr()
    assert main(["data", "show", str(out), "-n", "1", "--width", "60"]) == 0
    text = capsys.readouterr().out
    assert "question: who got the first nobel prize in physics" in text
    assert "GOLD" in text and "has_answer=True" in text and "[List of Nobel laureates in Physics]" in text
    assert text.count("[1] id:") == 1 and "[2] id:" not in text
    long_lines = [line for line in text.splitlines() if line.startswith("          ")]
    assert long_lines and all(len(line.strip()) <= 60 for line in long_lines)


def test_show_mmlu_choices(shared_data, tmp_path, capsys):
    out = tmp_path / "mmlu"
    main(["data", "convert", "--format", "mmlu", str(shared_data / "mmlu" / "dev"), str(out)])
    capsys.readouterr()
    main(["data", "show", str(out), "-n", "1"])
    text = capsys.readouterr().out
    assert "B. 1" in text and '"category": "STEM"' in text


def test_corpus_wiki_titles_unquoted(shared_data, tmp_path, capsys):
    src = shared_data / "flashrag" / "wiki_sample_1000.jsonl"
    out = tmp_path / "wiki"
    assert main(["data", "corpus", "--format", "jsonl", str(src), str(out)]) == 0
    assert "documents:               1000" in capsys.readouterr().out
    table = read_table(out)
    assert table.schema.equals(CORPUS_SCHEMA) and table.num_rows == 1000
    docs = table.to_pylist()
    assert docs[0] == {"doc_id": "0", "title": "Evan Morris",
                       "text": json.loads(src.open().readline())["contents"].split("\n", 1)[1]}
    assert not any(d["title"].startswith('"') or d["title"].endswith('"') for d in docs)
    words = [len(d["text"].split()) for d in docs]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["mean_words"] == round(sum(words) / len(words), 3)
    assert summary["max_words"] == max(words)


def test_hotpotqa_corpus_matches_hotpotqa_candidates(shared_data):
    docs = {d["doc_id"]: d for d in load_corpus("hotpotqa-corpus", shared_data / "hotpotqa" /
                                                 "hotpotqa_train_corpus.json")}
    assert len(docs) == 994
    rows = list(load_records("hotpotqa", shared_data / "hotpotqa" / "hotpotqa_train.json"))
    cands = [c for r in rows for c in r["candidates"]]
    assert all(docs[c["doc_id"]]["text"] == c["text"] for c in cands)


def test_dpr_ctxs_corpus_covers_every_oracle_gold(shared_data):
    path = shared_data / "nq_oracle" / "nq-open-oracle.jsonl.gz"
    ids = {d["doc_id"] for d in load_corpus("dpr-ctxs", path)}
    golds = {r["candidates"][0]["doc_id"] for r in load_records("dpr", path)}
    assert ids == golds and len(ids) == 2600


def test_corpus_jsonl_title_text_and_duplicate_ids(tmp_path, capsys):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": 1, "title": "A", "text": "one two"}\n{"id": "1", "title": "B", "text": "x"}\n')
    rc = main(["data", "corpus", "--format", "jsonl", "--skip-invalid", str(p), str(tmp_path / "o")])
    assert rc == 0
    assert read_rows(tmp_path / "o") == [{"doc_id": "1", "title": "A", "text": "one two"}]
    rej = json.loads((tmp_path / "o" / "_rejects.jsonl").read_text())
    assert rej["record"] == 2 and "duplicate doc_id '1'" in rej["reason"]


def test_hf_local_jsonl_with_column_mapping(tmp_path, capsys):
    p = tmp_path / "squadlike.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in [
        {"qid": "a", "query": "who?", "answers": {"text": ["me", "I"], "answer_start": [0, 0]},
         "passages": [{"title": "T", "text": "me.", "isgold": True}], "lang": "en"},
        {"qid": "b", "query": "what?", "answers": {"text": ["it"], "answer_start": [3]},
         "passages": [], "lang": "de"}]))
    out = tmp_path / "o"
    rc = main(["data", "convert", "--format", "hf", "--column", "id=qid", "--column", "question=query",
               "--column", "candidates=passages", "--split", "dev", str(p), str(out)])
    assert rc == 0, capsys.readouterr().err
    rows = read_rows(out)
    assert [(r["id"], r["question"], r["answers"]) for r in rows] == \
        [("a", "who?", ["me", "I"]), ("b", "what?", ["it"])]
    assert rows[0]["candidates"][0]["is_gold"] is True and rows[1]["candidates"] == []
    assert row_meta(rows[1]) == {"dataset": "hf", "lang": "de", "split": "dev"}


def test_hf_save_to_disk_dir_and_bad_mapping(tmp_path, capsys):
    import datasets

    ds = datasets.DatasetDict({"test": datasets.Dataset.from_list(
        [{"q": "one?", "a": "1"}, {"q": "two?", "a": "2"}])})
    ds.save_to_disk(str(tmp_path / "saved"))
    rows = list(load_records("hf", tmp_path / "saved", columns={"question": "q", "answers": "a"}))
    assert [(r["question"], r["answers"]) for r in rows] == [("one?", ["1"]), ("two?", ["2"])]
    rc = main(["data", "convert", "--format", "hf", "--column", "question=nope",
               str(tmp_path / "saved"), str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "record 1, field 'nope': no such column (mapped to question); columns are q, a" in err
    rc = main(["data", "convert", "--format", "hf", "--column", "query=q",
               str(tmp_path / "saved"), str(tmp_path / "o")])
    assert rc == 2 and "unknown target(s) query" in capsys.readouterr().err
