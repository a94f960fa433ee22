"""Config validation, schema validation and the CLI's top level."""

import pytest

from raglign.config import JobConfig, RayConfig, validate
from raglign.data.schema import candidate, make_row, to_table, validate_row
from raglign.errors import ConfigError, DataError


def test_config_error_names_field_path():
    with pytest.raises(ConfigError) as e:
        validate(JobConfig, {"job": "x", "ray": {"num_cpus": "many"}}, "jobs/x.yaml")
    assert "jobs/x.yaml" in str(e.value) and "ray.num_cpus" in str(e.value)


def test_config_rejects_unknown_key():
    with pytest.raises(ConfigError, match="ray.adress"):
        validate(JobConfig, {"job": "x", "ray": {"adress": "auto"}})
    assert validate(JobConfig, {"job": "x"}).ray == RayConfig()


def test_validate_row_names_candidate_field():
    row = make_row("q1", "who?", ["a"], [candidate("d1", "t", "x", score="high")])
    with pytest.raises(DataError) as e:
        validate_row(row, "in.jsonl", 7)
    assert str(e.value) == "in.jsonl, record 7, field 'candidates[0].score': expected a number, got 'high'"


def test_to_table_keeps_signal_fields_and_extra_columns():
    rows = [make_row("q", "who?", ["a"], [dict(candidate("d", "t", "x"), answer_logprob=-1.5)])]
    rows[0]["rationale"] = "because"
    t = to_table(rows)
    assert t.column("candidates").to_pylist()[0][0]["answer_logprob"] == -1.5
    assert t.column("rationale").to_pylist() == ["because"]


def test_cli_version_and_help(capsys):
    from raglign.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "raglign" in capsys.readouterr().out
