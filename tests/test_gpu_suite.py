"""benchmarks/gpu_suite.py: its FLOP accounting against hand counts and real parameter counts,
and ``--tiny`` run as a lent GPU machine would run it (no Ray, vLLM, pydantic, pyarrow or
pandas importable), whose JSON and Markdown must agree with each other and with the timings."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("ray", "vllm", "pydantic", "pyarrow", "pandas")
spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "benchmarks" / "gpu_suite.py")
gs = importlib.util.module_from_spec(spec)
sys.modules["gpu_suite"] = gs  # its dataclasses look their module up
spec.loader.exec_module(gs)


def test_llama_flops_match_parameters_and_hand_count():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**gs.TINY_LLAMA)
    model = LlamaForCausalLM(cfg)
    layer_matmuls = sum(p.numel() for p in model.model.layers.parameters() if p.dim() == 2)
    assert gs.llama_layer_params(cfg) == layer_matmuls
    # Hand count, hidden 64, 4 heads of 16, 2 kv heads, MLP 128, 2 layers, vocab 1000:
    # per layer q 64*64 + k,v 2*64*32 + o 64*64 + MLP 3*64*128 = 36864.
    assert gs.llama_layer_params(cfg) == 2 * 36864
    # 3 rows x 5 tokens over 9 keys, logits for 2 rows: 2*15*73728 + 2*2*1000*64
    # + attention 4 * 15 tokens * 9 keys * 2 layers * 4 heads * 16.
    assert gs.llama_forward_flops(cfg, 3, 5, 9, 2) == 2211840 + 256000 + 69120
    # The 8B shape: 6.98e9 matmul parameters in the layers (+ 0.53e9 in the LM head).
    assert gs.llama_layer_params(LlamaConfig(**gs.LLAMA_8B)) == 6_979_321_856


def test_flop_counter_sees_the_engine_forwards(tiny_llama, smollm_tokenizer):
    """The hook counts exactly the tokens the engine pushes through the model."""
    from raglign.engine import DocumentEngine

    engine = DocumentEngine(tiny_llama, smollm_tokenizer)
    counter = gs.FlopCounter(tiny_llama)
    docs = [("A", "first document text"), ("B", "the second, longer document text here")]
    cache = engine.prepare("Who?", docs)
    tokens, flops, matmul = counter.take()
    assert tokens == cache.num_keys and flops > matmul > 0
    engine.leave_one_out(cache, "Paris")
    tokens, _, _ = counter.take()
    assert tokens == 2 * (len(cache.suffix_ids) + len(engine.answer_ids("Paris")))
    counter.close()


def test_encoder_flops_match_parameters():
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    cfg = XLMRobertaConfig(**gs.TINY_XLMR, num_labels=1)
    model = XLMRobertaForSequenceClassification(cfg)
    matmuls = sum(p.numel() for n, p in model.named_parameters()
                  if p.dim() == 2 and "embeddings" not in n)
    assert gs.encoder_params(cfg) == matmuls  # layers + the head's dense and its 1 x h output
    # 6 * params * (10 + 20) tokens + 12 * 2 layers * 64 * (100 + 400)
    assert gs.encoder_train_flops(cfg, [10, 20]) == 6 * gs.encoder_params(cfg) * 30 + 768000


def test_synthetic_tokenizer_one_token_per_word():
    tok = gs.synthetic_tokenizer(1000)
    assert len(tok) == 1000
    assert tok("w5 w7 w995 w996", add_special_tokens=False)["input_ids"] == [9, 11, 999, 3]
    assert tok("w1 w2", add_special_tokens=True)["input_ids"] == [0, 5, 6]
    pair = tok(["w1 w2"], ["w3 " * 50], truncation="longest_first", max_length=12)["input_ids"]
    assert pair[0][:5] == [0, 5, 6, 2, 2] and len(pair[0]) == 12 and pair[0][-1] == 2


def _run_tiny(tmp_path: Path, block: bool) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if block:  # modules set to None in sys.modules: `import` fails, find_spec says absent
        site = tmp_path / "blocker"
        site.mkdir()
        (site / "sitecustomize.py").write_text(
            f"import sys\nfor name in {BLOCKED!r}:\n    sys.modules[name] = None\n")
        env["PYTHONPATH"] = f"{site}{os.pathsep}{REPO}"
    out = tmp_path / "suite"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--tiny",
                           "--threads", "1", "--out", str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_suite.json").read_text()), (out / "gpu_suite.md").read_text()


def _check_core_parts(result: dict, md: str) -> None:
    assert result["mode"] == "tiny" and result["machine"]["device_type"] == "cpu"
    assert result["peak"]["tflops"] > 0
    parts = result["parts"]
    for name in ("engine", "reranker", "grerank"):
        assert parts[name]["status"] == "ok", parts[name]
        assert all(v > 0 for v in parts[name]["metrics"].values()), parts[name]["metrics"]
    e = parts["engine"]["metrics"]
    assert e["loo_over_single"] == pytest.approx(e["loo_s"] / e["single_s"])
    assert e["single_s"] == pytest.approx(e["prefill_s"] + e["single_passes_s"])
    assert e["single_tokens_per_s"] == pytest.approx(e["single_tokens"] / e["single_s"])
    assert e["single_mfu"] == pytest.approx(
        e["single_tflops"] * 1e12 / (result["peak"]["tflops"] * 1e12))
    assert e["single_mfu"] > e["single_mfu_matmul_only"] and e["scores_finite"] == 1
    # The shared prefix once + 2 queries x 20 documents x ("(Title:", the title, 16 words).
    from raglign.prompts import encode_piece, parallel_prompt

    prefix = parallel_prompt(gs.synthetic_tokenizer(1000), "q", []).prefix
    assert e["prefill_tokens"] == len(encode_piece(gs.synthetic_tokenizer(1000), prefix,
                                                   first=True)) + 2 * 20 * 18
    r = parts["reranker"]["metrics"]
    assert r["pairs_per_s"] == pytest.approx(8 / r["step_s"]) and r["grad_norm_finite"] == 1
    g = parts["grerank"]["metrics"]
    assert g["1b_grad_norm_finite"] == g["8b_grad_norm_finite"] == 1
    assert g["8b_generator_params"] > g["1b_generator_params"]
    # The Markdown table is the JSON, row for row.
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| ")][1:]
    table = {(c[0][2:], c[1]): c[2][:-2] for c in rows}
    assert len(table) == len(gs.table_rows(result))
    for name in ("engine", "reranker", "grerank"):
        for key, value in parts[name]["metrics"].items():
            assert table[name, key] == gs.fmt(value)
            assert float(table[name, key]) == pytest.approx(value, rel=1e-3)


def test_tiny_suite_runs_without_ray_vllm_pydantic_pyarrow(tmp_path):
    result, md = _run_tiny(tmp_path, block=True)
    _check_core_parts(result, md)
    parts = result["parts"]
    assert parts["label"] == {"status": "skipped", "reason": "ray not importable",
                              "seconds": parts["label"]["seconds"]}
    assert parts["vllm"]["reason"] == "vllm not importable"
    assert "| label | skipped | ray not importable |" in md


@pytest.mark.integration
def test_tiny_suite_labels_through_ray_data(tmp_path):
    """Everything importable: (d) runs the label job on Ray Data and in the plain loop."""
    result, md = _run_tiny(tmp_path, block=False)
    _check_core_parts(result, md)
    label = result["parts"]["label"]
    assert label["status"] == "ok", label
    m = label["metrics"]
    assert m["plain_rows_per_s"] > 0 and m["ray_rows_per_s"] > 0
    assert m["ray_over_plain_incl_load"] == pytest.approx(
        m["ray_s"] / (4 / m["plain_rows_per_s"] + m["plain_load_s"]))
    assert result["parts"]["vllm"]["status"] == "skipped"


def test_parts_past_the_budget_are_skipped_with_the_reason(tmp_path):
    assert gs.main(["--tiny", "--parts", "engine", "label", "--budget-seconds", "0",
                    "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_suite.json").read_text())
    for name in ("engine", "label"):
        assert result["parts"][name]["status"] == "skipped"
        assert result["parts"][name]["reason"] == "the suite passed its 0 s budget before this part"
    assert "| engine | skipped | the suite passed its 0 s budget" in (
        tmp_path / "gpu_suite.md").read_text()
