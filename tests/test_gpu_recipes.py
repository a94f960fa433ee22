"""The papers' GPU runs (jobs/gpu/): every recipe validates with the hub ids it names, without
downloading anything, and the generator flags mean the same on every command."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raglign.cli import build_parser
from raglign.cli.recipe import job_config
from raglign.config import job_class, load_job, validate
from raglign.errors import ConfigError

GPU = Path(__file__).resolve().parents[1] / "jobs" / "gpu"
LLAMA, QWEN, BGE = "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct", \
    "BAAI/bge-reranker-base"


@pytest.fixture()
def offline(monkeypatch):
    """Validation must not resolve a model (that would download it)."""
    import raglign.models.registry as registry

    def refuse(name, *a, **k):
        raise AssertionError(f"validation resolved {name}")
    monkeypatch.setattr(registry, "resolve_model", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_the_papers_gpu_recipes_validate(offline):
    jobs = {p.stem: load_job(p) for p in sorted(GPU.glob("*.yaml"))}
    assert set(jobs) == {"label_radio_nq", "train_radio_nq", "eval_radio_nq",
                         "train_grerank_hotpotqa", "eval_grerank_hotpotqa",
                         "train_rrpo_hotpotqa", "eval_rrpo_hotpotqa"}
    radio = jobs["label_radio_nq"]
    assert (radio.generator.name, radio.generator.backend) == (LLAMA, "vllm")
    assert radio.generator.vllm_config().model == LLAMA and radio.gpus_per_actor == 0.25
    assert jobs["train_radio_nq"].model == BGE and jobs["train_radio_nq"].use_gpu
    grerank = jobs["train_grerank_hotpotqa"]
    assert (grerank.objective, grerank.gumbel.generator.name, grerank.gumbel.generator.backend,
            grerank.gumbel.generator.dtype, grerank.use_gpu) == (
        "gumbel", LLAMA, "transformers", "bfloat16", True)
    rrpo = jobs["train_rrpo_hotpotqa"]
    assert (rrpo.rrpo.generator.name, rrpo.rrpo.k, rrpo.model, rrpo.use_gpu,
            rrpo.rrpo.overlap_rollouts) == (QWEN, 3, BGE, True, True)
    for name, reader, k in (("eval_radio_nq", LLAMA, 5), ("eval_grerank_hotpotqa", LLAMA, 5),
                            ("eval_rrpo_hotpotqa", QWEN, 3)):
        ev = jobs[name]
        assert (ev.generator.name, ev.generator.backend, ev.k) == (reader, "vllm", k), name


def test_grerank_refuses_vllm_and_http_saying_why(offline):
    data = yaml.safe_load((GPU / "train_grerank_hotpotqa.yaml").read_text())
    for backend, extra in (("vllm", {}), ("http", {"http": {"base_url": "http://h/v1"}})):
        data["gumbel"]["generator"] = {"name": LLAMA, "backend": backend, **extra}
        with pytest.raises(ConfigError, match=f"backend '{backend}' cannot run here: "
                           "G-Rerank's generator needs gradients through the model's attention"):
            validate(job_class("train"), data, "gpu.yaml")


def _config(argv):
    return job_config(build_parser().parse_args(argv))


def test_generator_flags_set_the_spec_on_every_command(tmp_path):
    recipe = tmp_path / "label.yaml"
    recipe.write_text(yaml.safe_dump({
        "job": "label", "input": "i", "output": "o", "signals": ["answer_logprob"],
        "context": "concat", "generator": {"name": "a", "backend": "vllm",
                                           "vllm": {"max_model_len": 512}}}))
    # A flag changes its field and keeps the block's others.
    cfg = _config(["label", "--config", str(recipe), "--generator", "b", "--dtype", "float16"])
    assert (cfg.generator.name, cfg.generator.backend, cfg.generator.dtype,
            cfg.generator.vllm.max_model_len) == ("b", "vllm", "float16", 512)
    # The shorthand `generator: NAME` is expanded when a flag or --set reaches into it.
    flags = ["--generator", "g", "--backend", "vllm", "--dtype", "bfloat16"]
    for argv in (["label", "i", "o", "--signals", "answer_logprob", "--set", "context=concat"],
                 ["eval", "d", "--output", "o.json"], ["demo"]):
        cfg = _config(argv + flags)
        assert (cfg.generator.name, cfg.generator.backend, cfg.generator.dtype) == (
            "g", "vllm", "bfloat16"), argv[0]
    cfg = _config(["demo", "--set", "generator=g", "--device", "cpu", "--gpus-per-actor", "0.5"])
    assert (cfg.generator.name, cfg.generator.device, cfg.gpus_per_actor) == ("g", "cpu", 0.5)
    assert _config(["eval", "d", "--output", "o", "--gpus-per-actor", "0.25"]).gpus_per_actor \
        == 0.25
    with pytest.raises(ConfigError, match="device applies to the transformers backend only"):
        _config(["eval", "d", "--output", "o", "--generator", "g", "--backend", "vllm",
                 "--device", "cuda"])


def test_grerank_commands_take_the_same_flags(monkeypatch):
    import raglign.pipeline.label
    from raglign.cli import main

    class Ran(Exception):
        pass

    def run_label(cfg):
        raise Ran(cfg)

    monkeypatch.setattr(raglign.pipeline.label, "run_label", run_label)
    with pytest.raises(Ran) as ran:
        main(["grerank", "mine-weights", "d", "o", "--generator", "g", "--dtype", "float32",
              "--device", "cpu", "--gpus-per-actor", "0.5"])
    cfg = ran.value.args[0]
    assert (cfg.generator.name, cfg.generator.dtype, cfg.generator.device, cfg.gpus_per_actor) \
        == ("g", "float32", "cpu", 0.5)
    assert main(["grerank", "mine-weights", "d", "o", "--generator", "g", "--backend",
                 "vllm"]) == 2  # gumbel_weight reads the engine: refused before anything runs
    assert main(["grerank", "ablation", "d", "o", "--generator", "g", "--backend", "vllm"]) == 2
