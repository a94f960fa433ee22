"""benchmarks/wise_ft.py: which students it merges, how merge names map back to their student
and weight, the choice on validation (the base competes), and the report's table rows."""

from __future__ import annotations

import yaml


def _run(root, name, kind):
    (root / name / "model").mkdir(parents=True)
    (root / name / "train_config.yaml").write_text(yaml.safe_dump({"kind": kind, "model": "m"}))


def test_students_are_the_bi_encoder_runs_without_controls(tmp_path, bench_module):
    bench = bench_module("wise_ft")
    for name, kind in (("T0.02-a0", "bi"), ("cross-T1-a0", "cross"), ("control-T0.02-a0", "bi"),
                       ("T0.1-a0.5-geo", "bi")):
        _run(tmp_path, name, kind)
    (tmp_path / "unfinished").mkdir()  # no model/: a run that died before its export
    assert list(bench.students(tmp_path)) == ["T0.02-a0", "T0.1-a0.5-geo"]


def test_names_weights_and_the_choice(bench_module):
    bench = bench_module("wise_ft")
    assert bench.source("T0.1-a0.5-geo-w0.25") == "T0.1-a0.5-geo"
    assert bench.source("T0.1-a0") == "T0.1-a0"
    assert [bench.weight(n) for n in ("base", "T0.1-a0", "T0.1-a0-w0.75")] == [1.0, 0.0, 0.75]
    val = {"base": {"mrr": 0.9}, "s": {"mrr": 0.85}, "s-w0.5": {"mrr": 0.92},
           "t-w0.5": {"mrr": 0.92}}
    assert bench.choose(val) == "s-w0.5"  # the first of a tie
    assert bench.choose({"base": {"mrr": 0.9}, "s-w0.5": {"mrr": 0.9}}) == "base"


def test_report_rows_carry_both_differences(bench_module):
    bench = bench_module("wise_ft")
    d = {"mrr": {"diff": 0.05, "diff_ci": [0.01, 0.09]},
         "recall@5": {"diff": -0.01, "diff_ci": [-0.03, 0.01]}}
    part = {"test": {"base": {"mrr": 0.9, "recall@5": 0.8}, "s-w0.5": {"mrr": 0.95,
                                                                      "recall@5": 0.79}},
            "test_vs_base": {"s-w0.5": d}, "test_vs_student": {"s-w0.5": d}}
    rows = bench._rows(part, "test", "s-w0.5")
    assert rows[0].endswith("| MRR − its student | R@5 − its student |")
    assert rows[2] == "| base | 0.900 | 0.800 | – | – | – | – |"
    assert rows[3] == ("| **s-w0.5** | 0.950 | 0.790 | +0.050 [+0.01, +0.09] ▲ | "
                       "-0.010 [-0.03, +0.01] | +0.050 [+0.01, +0.09] ▲ | -0.010 [-0.03, +0.01] |")


def test_markdown_has_each_part_and_the_controls(bench_module):
    bench = bench_module("wise_ft")
    d = {"mrr": {"diff": 0.02, "diff_ci": [-0.01, 0.05]},
         "recall@5": {"diff": 0.0, "diff_ci": [0.0, 0.0]}}
    scores = {"base": {"n": 3, "mrr": 0.9, "recall@5": 0.8},
              "s-w0.25": {"n": 3, "mrr": 0.91, "recall@5": 0.8}}
    nq = {"val": scores, "test": scores, "chosen": "s-w0.25", "val_vs_base": {"s-w0.25": d},
          "test_vs_base": {"s-w0.25": d}, "test_vs_student": {}}
    hq = {"demo": "runs/demo", "weight": 0.25, "test": scores, "test_vs_base": {},
          "test_vs_control": {"pdist": d, "pdist-w0.25": d}}
    md = bench.markdown({"nq": nq, "hotpotqa": hq})
    assert "chosen: `s-w0.25`" in md and "w = 0.25 is NQ validation's choice" in md
    assert md.count("| **s-w0.25** |") == 2  # validation and test mark the choice
    assert "| pdist-w0.25 | +0.020 [-0.01, +0.05] | +0.000 [+0.00, +0.00] |" in md
