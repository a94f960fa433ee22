"""``raglign mine --lm-logprobs``: EMDR / REPLUG rows carry the labelled ``answer_logprob`` of the
first k candidates unchanged, and ``raglign train`` reads them for objectives emdr and replug."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from raglign.cli import main
from raglign.data.io import write_rows
from raglign.data.schema import candidate, make_row
from raglign.errors import DataError
from raglign.mining import mine_lm_logprobs


def _rows(sizes=(6, 6, 3)) -> list[dict]:
    rows = []
    for i, n in enumerate(sizes):
        cands = [dict(candidate(f"q{i}d{j}", f"t{j}", f"text {j}", float(n - j)),
                      answer_logprob=-0.25 * ((j * 5 + i) % 7) - 0.5 * i)
                 for j in range(n)]
        rows.append(make_row(f"q{i}", f"question {i}?", ["a"], cands))
    return rows


def test_cli_writes_first_k_answer_logprobs_and_train_reads_them(tmp_path, capsys):
    from raglign.pipeline.train import load_train_table

    rows = _rows()
    write_rows(rows, tmp_path / "in")
    assert main(["mine", str(tmp_path / "in"), str(tmp_path / "lm"), "--lm-logprobs",
                 "--k", "4"]) == 0
    got = pq.read_table(tmp_path / "lm" / "part-00000.parquet").to_pylist()
    assert [g["id"] for g in got] == ["q0", "q1"]  # q2 has 3 < k candidates
    for g, r in zip(got, rows):
        assert [d["doc_id"] for d in g["docs"]] == [c["doc_id"] for c in r["candidates"][:4]]
        assert g["lm_logprob"] == [c["answer_logprob"] for c in r["candidates"][:4]]
        assert g["signal"] == "answer_logprob"
    summary = json.loads((tmp_path / "lm" / "_summary.json").read_text())
    assert (summary["kind"], summary["records"], summary["rows_rejected"]) == ("lm_logprobs", 2, 1)
    assert "too few candidates: 3 < k=4" in (tmp_path / "lm" / "_rejects.jsonl").read_text()

    for objective in ("emdr", "replug"):
        table, provenance = load_train_table(str(tmp_path / "lm"), objective)
        assert table.column("values").to_pylist() == [g["lm_logprob"] for g in got]
        assert provenance == {"signal": ["answer_logprob"]}

    # Without --k every candidate is kept, so no row is too short.
    assert main(["mine", str(tmp_path / "in"), str(tmp_path / "all"), "--lm-logprobs"]) == 0
    every = pq.read_table(tmp_path / "all" / "part-00000.parquet").to_pylist()
    assert [len(g["lm_logprob"]) for g in every] == [6, 6, 3]


def test_missing_value_names_row_and_field_but_only_within_k():
    rows = _rows()
    rows[1]["candidates"][2]["answer_logprob"] = None
    with pytest.raises(DataError, match=r"lab, record q1, field 'candidates\[2\].answer_logprob'"):
        mine_lm_logprobs(rows, k=3, source="lab")
    rows[1]["candidates"][2]["answer_logprob"] = "high"
    with pytest.raises(DataError, match=r"record q1, field 'candidates\[2\].answer_logprob': "
                                        r"expected a number"):
        mine_lm_logprobs(rows, k=3)
    assert len(mine_lm_logprobs(rows, k=2).records) == 3  # candidate 2 is outside the top 2


def test_train_hint_names_the_mine_command(tmp_path):
    from raglign.pipeline.train import load_train_table

    write_rows(_rows(), tmp_path / "in")
    assert main(["mine", str(tmp_path / "in"), str(tmp_path / "t"), "--targets", "pdist"]) == 0
    with pytest.raises(DataError, match=r"field 'lm_logprob': missing column.*raglign mine "
                                        r"LABELLED OUT --lm-logprobs"):
        load_train_table(str(tmp_path / "t"), "emdr")


@pytest.mark.parametrize("flags, message", [
    (["--lm-logprobs", "--targets", "pdist"], "exactly one of signal"),
    (["--lm-logprobs", "--temperature", "0.1"], "temperature applies to soft targets"),
    (["--lm-logprobs", "--m", "3"], "apply to groups"),
])
def test_lm_logprobs_mode_refuses_other_modes_options(tmp_path, capsys, flags, message):
    assert main(["mine", str(tmp_path / "in"), str(tmp_path / "x"), *flags]) == 2
    assert message in capsys.readouterr().err
