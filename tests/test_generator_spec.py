"""The one generator spec every job embeds: shorthand, per-backend rules, the backend configs it
builds, its manifest fingerprint, and the generator ``build_generator`` returns."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raglign.config import validate
from raglign.errors import ConfigError
from raglign.models import vllm_backend as vb
from raglign.models.generator_spec import GeneratorSpec, build_generator


def _spec(data) -> GeneratorSpec:
    return validate(GeneratorSpec, data, "spec.yaml")


def test_shorthand_defaults_and_backend_rules():
    assert _spec("smollm2-135m") == _spec({"name": "smollm2-135m"})
    s = _spec("smollm2-135m")
    assert (s.backend, s.dtype, s.device, s.http) == ("transformers", "auto", "auto", None)
    with pytest.raises(ConfigError, match="http: block with at least base_url"):
        _spec({"name": "m", "backend": "http"})
    with pytest.raises(ConfigError, match="device applies to the transformers backend only"):
        _spec({"name": "m", "backend": "vllm", "device": "cuda:1"})
    with pytest.raises(ConfigError, match="dtype does not apply to backend 'http'"):
        _spec({"name": "m", "backend": "http", "dtype": "bfloat16",
               "http": {"base_url": "http://h/v1"}})
    with pytest.raises(ConfigError, match=r"dtype: Input should be 'auto'"):
        _spec({"name": "m", "dtype": "int8"})
    with pytest.raises(ConfigError, match="unknown key `vllm.dtype`"):
        _spec({"name": "m", "vllm": {"dtype": "float16"}})  # the spec's dtype is vLLM's


def test_backend_configs_default_to_the_name():
    s = _spec({"name": "org/llm", "backend": "vllm", "dtype": "bfloat16",
               "vllm": {"max_model_len": 4096, "batch_size": 8}})
    v = s.vllm_config()
    assert (v.model, v.dtype, v.max_model_len, v.batch_size) == ("org/llm", "bfloat16", 4096, 8)
    assert vb.engine_config(v).engine_kwargs["dtype"] == "bfloat16"
    h = _spec({"name": "smollm2-135m", "backend": "http",
               "http": {"base_url": "http://h/v1", "model": "served"}}).http_config()
    assert (h.model, h.tokenizer, h.endpoint) == ("served", "smollm2-135m", "chat")


def test_fingerprint_is_the_flat_form_label_manifests_recorded():
    # What LabelConfig.fingerprint() held for these fields before the spec existed.
    assert _spec("g").fingerprint() == {"generator": "g", "backend": "transformers",
                                        "dtype": "auto", "device": "auto"}
    v = _spec({"name": "g", "backend": "vllm", "vllm": {"batch_size": 4, "max_model_len": 2048}})
    assert v.fingerprint()["vllm"] == {"model": None, "tensor_parallel_size": 1,
                                       "max_model_len": 2048, "dtype": "auto",
                                       "engine_kwargs": {}}
    h = _spec({"name": "g", "backend": "http", "http": {"base_url": "u", "qps": 3}})
    assert h.fingerprint()["http"] == {"base_url": "u", "model": None, "tokenizer": None,
                                       "endpoint": "chat"}


def test_validating_a_spec_loads_no_torch():
    code = ("import sys, raglign.training_config as t\n"
            "t.TrainConfig(data='d', output='o', objective='rrpo')\n"
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_build_generator_picks_the_backend(tiny_dir, smollm_tokenizer, monkeypatch):
    from raglign.models.generator import TransformersGenerator
    from raglign.models.processor_generator import HttpGenerator, VLLMGenerator
    from raglign.prompts import qa_prompt

    gen = build_generator(_spec({"name": tiny_dir, "dtype": "float32", "device": "cpu"}),
                          batch_size=2)
    ref = TransformersGenerator.from_name(tiny_dir, dtype="float32", device="cpu")
    assert isinstance(gen, TransformersGenerator) and gen.batch_size == 2
    prompt = qa_prompt(smollm_tokenizer, "Where is Paris?", [(None, "Paris is in France.")])
    assert gen.generate([prompt], max_new_tokens=4) == ref.generate([prompt], max_new_tokens=4)
    monkeypatch.setattr(vb, "require_vllm", lambda: None)
    v = build_generator(_spec({"name": "smollm2-135m", "backend": "vllm"}))
    assert isinstance(v, VLLMGenerator) and v.config.model == "smollm2-135m"
    h = build_generator(_spec({"name": "smollm2-135m", "backend": "http",
                               "http": {"base_url": "http://h/v1", "endpoint": "completions"}}))
    assert isinstance(h, HttpGenerator) and h.config.tokenizer == "smollm2-135m"
    with pytest.raises(ConfigError, match="options of the transformers backend"):
        build_generator(_spec({"name": "m", "backend": "vllm"}), batch_size=2)


# config_hash(fingerprint()) of these label jobs, recorded with the code before the generator
# was one block (main at 338a33b): an output labelled then must still be resumed.
RECORDED = {"demo": "1d31ccd5fd2b3aae", "vllm": "5ba2ac0d87b33344", "http": "6ccb10ef8599898c"}


def test_label_manifests_written_before_the_spec_still_match(tmp_path):
    from raglign.pipeline.demo import DemoConfig, label_config
    from raglign.pipeline.label import load_label_config
    from raglign import storage
    from raglign.data.io import config_hash
    from raglign.pipeline.shards import ShardStore

    demo = label_config(DemoConfig(), "runs/demo/split/train", "runs/demo/labelled")
    assert config_hash(demo.fingerprint()) == RECORDED["demo"]
    vllm = load_label_config(input="i", output="o", signals=["answer_logprob", "judge"],
                             context="concat", generator={
                                 "name": "smollm2-135m", "backend": "vllm",
                                 "vllm": {"batch_size": 4, "max_model_len": 2048}})
    assert config_hash(vllm.fingerprint()) == RECORDED["vllm"]
    http = load_label_config(input="i", output="o", signals=["answer_logprob"], context="concat",
                             generator={"name": "smollm2-135m", "backend": "http", "http": {
                                 "base_url": "http://h/v1", "model": "smollm2", "batch_size": 8}})
    assert config_hash(http.fingerprint()) == RECORDED["http"]
    # An output directory whose manifest an earlier run wrote opens without complaint.
    storage.write_json(tmp_path / "_manifest.json",
                       {"job": "label", "hash": RECORDED["demo"], "fingerprint": {}})
    ShardStore(tmp_path, "label").open(demo.fingerprint())


def test_old_flat_keys_name_their_place_in_the_generator_block():
    from raglign.pipeline.evaluate import EvalConfig
    from raglign.pipeline.label import load_label_config

    with pytest.raises(ConfigError, match=r"write generator: \{name: g, dtype: float32\}"):
        load_label_config(input="i", output="o", signals=["judge"], generator="g",
                          dtype="float32")
    with pytest.raises(ConfigError, match=r"backend, vllm: generator settings are keys"):
        load_label_config(input="i", output="o", signals=["judge"], generator="g",
                          backend="vllm", vllm={"batch_size": 2})
    with pytest.raises(ConfigError, match="dtype: generator settings"):
        validate(EvalConfig, {"data": "d", "output": "o", "generator": "g", "dtype": "float32"})
