"""Errors say what to do next: the closest valid name for a typo (recipe keys, choices, CLI
values), the command that makes a missing input, ``--skip-invalid`` for a rejected record."""

from __future__ import annotations

import json
import re

import pytest

from raglign.cli import main
from raglign.config import job_class, load_job, validate
from raglign.data import convert
from raglign.data.io import read_rows
from raglign.errors import ConfigError, DataError, MissingInputError, did_you_mean

TRAIN = {"job": "train", "data": "groups", "output": "out"}


def test_did_you_mean_names_the_closest_valid_names_or_nothing():
    assert did_you_mean("batch_sise", ["batch_size", "lr"]) == " (did you mean `batch_size`?)"
    assert did_you_mean("pdst", ["pdist", "loop", "adist"]) == " (did you mean `pdist` or `adist`?)"
    assert did_you_mean("zzz", ["batch_size", "lr"]) == ""


def test_unknown_recipe_key_names_file_path_and_closest_key(tmp_path):
    recipe = tmp_path / "train.yaml"
    recipe.write_text("job: train\ndata: groups\noutput: out\nbatch_sise: 8\n")
    with pytest.raises(ConfigError, match=rf"unknown key `batch_sise` in {recipe} "
                                          r"\(did you mean `batch_size`\?\)"):
        load_job(recipe)


def test_unknown_nested_key_suggests_the_full_path():
    with pytest.raises(ConfigError, match=r"unknown key `ray.adress` in t.yaml "
                                          r"\(did you mean `ray.address`\?\)"):
        validate(job_class("train"), {**TRAIN, "ray": {"adress": "auto"}}, "t.yaml")


def test_unknown_key_without_a_close_name_lists_the_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key `ray.zzzz` in t.yaml; valid keys under "
                                          r"ray: address, num_cpus, num_gpus"):
        validate(job_class("train"), {**TRAIN, "ray": {"zzzz": 1}}, "t.yaml")


def test_invalid_choice_in_a_recipe_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"method: Input should be 'dense' or 'bm25' "
                                          r"\(got 'bm26'\) \(did you mean `bm25`\?\)"):
        validate(job_class("retrieve"), {"job": "retrieve", "queries": "q", "corpus": "c",
                                         "output": "o", "method": "bm26"}, "r.yaml")


def test_unknown_job_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown job 'lable' \(did you mean `label`\?\)"):
        job_class("lable")


@pytest.mark.parametrize("argv,expected", [
    (["lable"], r"invalid choice: 'lable' \(did you mean `label`\?\)"),
    (["mine", "in", "out", "--targets", "pdst"],
     r"invalid choice: 'pdst' \(did you mean `pdist` or `adist`\?\)"),
])
def test_cli_invalid_choice_suggests_the_closest(argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert re.search(expected, capsys.readouterr().err)


@pytest.mark.parametrize("argv,made_by", [
    (["mine", "{missing}", "{out}", "--targets", "pdist"], "run `raglign label` first"),
    (["signals-eval", "{missing}"], "run `raglign label` first"),
    (["data", "show", "{missing}"], "run `raglign data convert`"),
    (["report", "{missing}/run.json"], "run `raglign eval DATA --output RUN.json` first"),
])
def test_cli_missing_input_names_the_command_that_makes_it(argv, made_by, tmp_path, capsys):
    paths = {"missing": str(tmp_path / "nowhere"), "out": str(tmp_path / "out")}
    assert main([a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and made_by in err


def test_empty_input_directory_is_a_missing_input(tmp_path):
    with pytest.raises(MissingInputError, match="contains no .parquet files"):
        read_rows(tmp_path)


def test_rejected_record_names_skip_invalid(tmp_path):
    p = tmp_path / "nq.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": ["a"]}) + "\n"
                 + json.dumps({"question": "q2"}) + "\n")
    with pytest.raises(DataError, match=r"record 2, field 'answer': missing\n"
                                        r"  pass --skip-invalid") as e:
        convert("nq-open", p, tmp_path / "out")
    assert (e.value.record, e.value.field, e.value.reason) == (2, "answer", "missing")
