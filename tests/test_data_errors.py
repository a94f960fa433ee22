"""Bad input: each error names file, 1-based record and field; --skip-invalid rejects instead."""

from __future__ import annotations

import json

import pytest

from raglign.data import convert, load_records
from raglign.data.io import read_rows
from raglign.errors import ConfigError, DataError


def _jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _error(fmt, path, **opts) -> DataError:
    with pytest.raises(DataError) as e:
        list(load_records(fmt, path, **opts))
    return e.value


GOOD_HP = {"_id": "x", "question": "q?", "answer": "a", "type": "bridge", "level": "easy",
           "supporting_facts": [["T", 0]], "context": [["T", ["s0.", " s1."]]]}


def test_hotpotqa_bad_supporting_fact_names_file_record_field(tmp_path):
    bad = dict(GOOD_HP, _id="y", supporting_facts=[["T", 0], ["T"]])
    p = tmp_path / "hotpotqa_train.json"
    p.write_text(json.dumps([GOOD_HP, dict(GOOD_HP, _id="z"), bad]))
    e = _error("hotpotqa", p)
    assert (e.record, e.field) == (3, "supporting_facts[1]")
    assert str(e) == (f"{p}, record 3, field 'supporting_facts[1]': expected [title, sentence_id]")


def test_malformed_json_line(tmp_path):
    p = _jsonl(tmp_path / "nq.jsonl", [{"question": "q", "answer": ["a"]}, '{"question": "q2", '])
    e = _error("nq-open", p)
    assert e.record == 2 and "malformed JSON" in e.reason


def test_malformed_json_list_is_fatal(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[{"_id": "x",')
    e = _error("hotpotqa", p)
    assert e.record is None and "not valid JSON" in e.reason


@pytest.mark.parametrize("fmt,record,field,reason", [
    ("nq-open", {"answer": ["a"]}, "question", "missing"),
    ("nq-open", {"question": "q", "answer": [1]}, "answer[0]", "expected a string, got a number"),
    ("nq-open", {"question": "", "answer": ["a"]}, "question", "must not be empty"),
    ("dpr", {"question": "q", "answers": ["a"], "ctxs": [{"title": "t"}]}, "ctxs[0].text", "missing"),
    ("dpr", {"question": "q", "answers": ["a"], "ctxs": [{"text": "t", "score": "high"}]},
     "ctxs[0].score", "expected a number, got 'high'"),
    ("dpr", {"question": "q", "answers": ["a"], "ctxs": [{"text": "t", "isgold": "yes"}]},
     "ctxs[0].isgold", "expected true/false, got 'yes'"),
    ("flashrag", {"id": "1", "question": "q", "golden_answers": {"a": 1}}, "golden_answers",
     "expected a list of strings"),
    ("musique", {"id": "m", "question": "q", "answer": "a", "paragraphs": [
        {"idx": 0, "title": "t", "paragraph_text": "p", "is_supporting": "no"}]},
     "paragraphs[0].is_supporting", "expected true/false, got 'no'"),
    ("musique", {"id": "m", "question": "q", "answer": "a", "paragraphs": {}}, "paragraphs",
     "expected a list, got an object"),
    ("2wiki", {"_id": "w", "question": "q", "answer": "a", "context": [["T", "not a list"]]},
     "context[0]", "expected [title, [sentences]]"),
])
def test_missing_field_and_wrong_type(tmp_path, fmt, record, field, reason):
    p = _jsonl(tmp_path / "in.jsonl", [record])
    e = _error(fmt, p)
    assert (e.source, e.record, e.field, e.reason) == (str(p), 1, field, reason)


def test_record_that_is_not_an_object(tmp_path):
    # JSON Lines whose first line is an array: not mistaken for one JSON list
    e = _error("nq-open", _jsonl(tmp_path / "in.jsonl", ["[1, 2]", "[3]"]))
    assert (e.record, e.reason) == (1, "expected a JSON object, got a list")


def test_duplicate_ids_are_an_error(tmp_path):
    p = _jsonl(tmp_path / "in.jsonl", [{"question": "same", "answer": ["a"]},
                                       {"question": "same", "answer": ["b"]}])
    e = _error("nq-open", p)
    assert (e.record, e.field) == (2, "id") and "record 1" in e.reason


def test_mmlu_bad_answer_letter_and_short_row(tmp_path):
    p = tmp_path / "anatomy_dev.csv"
    p.write_text('"What, exactly?",a,b,c,d,A\nQ2,a,b,c,d,E\n')
    e = _error("mmlu", p)
    assert (e.source, e.record, e.field) == (str(p), 2, "answer")
    assert e.reason == "expected one of A, B, C, D, got 'E'"
    p.write_text("Q,a,b,B\nQ2,a\n")
    e = _error("mmlu", p)
    assert e.record == 2 and "got 2 columns" in e.reason


def test_mmlu_quoted_multiline_question_is_one_record(tmp_path):
    p = tmp_path / "virology_test.csv"
    p.write_text('"line one\nline two",a,b,c,d,C\nQ2,a,b,c,d,D\n')
    rows = list(load_records("mmlu", p))
    assert [r["id"] for r in rows] == ["virology_test_1", "virology_test_2"]
    assert rows[0]["question"] == "line one\nline two" and rows[0]["answers"] == ["C"]


def test_missing_input_and_unknown_option(tmp_path):
    e = _error("nq-open", tmp_path / "nope.jsonl")
    assert e.reason == "no such file"
    with pytest.raises(ConfigError, match="does not take option"):
        list(load_records("nq-open", tmp_path / "nope.jsonl", columns={}))


def test_skip_invalid_writes_rejects_and_counts(tmp_path):
    p = _jsonl(tmp_path / "nq.jsonl", [
        {"question": "q1", "answer": ["a"]},
        '{"question": broken',
        {"question": "q3", "answer": "single answer ok"},
        {"question": "q4"},
        {"question": "q5", "answer": ["e"]},
    ])
    out = tmp_path / "out"
    with pytest.raises(DataError):
        convert("nq-open", p, out)
    assert not list(out.glob("part-*")) and not list(out.glob(".staging-*"))  # nothing half-written
    s = convert("nq-open", p, out, skip_invalid=True)
    assert (s.rows, s.rejected) == (3, 2)
    assert [r["question"] for r in read_rows(out)] == ["q1", "q3", "q5"]
    rejects = [json.loads(line) for line in (out / "_rejects.jsonl").read_text().splitlines()]
    assert [(r["record"], r["field"]) for r in rejects] == [(2, None), (4, "answer")]
    assert rejects[0]["raw"] == '{"question": broken' and rejects[1]["raw"] == {"question": "q4"}
    assert rejects[1]["reason"] == "missing" and rejects[1]["source"] == str(p)
    assert json.loads((out / "_summary.json").read_text())["rejected"] == 2


def test_failed_conversion_keeps_previous_output(tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", [{"question": "q1", "answer": ["a"]}])
    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "q2"}])
    out = tmp_path / "out"
    convert("nq-open", good, out)
    with pytest.raises(DataError):
        convert("nq-open", bad, out)
    assert [r["question"] for r in read_rows(out)] == ["q1"]
    assert json.loads((out / "_summary.json").read_text())["input"] == str(good)
