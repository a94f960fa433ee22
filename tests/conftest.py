"""Shared fixtures: the shared data location, one Ray session, real tokenizers and tiny models.

Tiny models are random-initialised from small configs but use the real tokenizers of the
packaged models, so prompt construction, chat templates and token boundaries are exercised
exactly as with the real weights; the ``integration`` marker is for tests that need real weights.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``$RAGLIGN_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    path = Path(os.environ.get("RAGLIGN_SHARED_DATA", REPO.parent / "shared" / "data"))
    assert path.is_dir(), f"shared data not found at {path}; set RAGLIGN_SHARED_DATA"
    return path


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One local Ray for the whole test session (2 CPUs, 512 MiB object store)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=512 * 1024 * 1024, include_dashboard=False,
                 _temp_dir=str(tmp_path_factory.mktemp("ray")), log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smollm_tokenizer():
    from raglign.models.registry import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def gemma_tokenizer():
    from raglign.models.registry import load_tokenizer

    return load_tokenizer("gemma3-270m")


def _tiny(config_cls_name: str, model_type_kwargs: dict, vocab_size: int, seed: int = 0):
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = getattr(transformers, config_cls_name)(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        **model_type_kwargs,
    )
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_llama(smollm_tokenizer):
    """Llama-family (SmolLM2's architecture) with SmolLM2's tokenizer."""
    return _tiny("LlamaConfig", {"tie_word_embeddings": True}, len(smollm_tokenizer))


@pytest.fixture(scope="session")
def tiny_qwen2(smollm_tokenizer):
    """Qwen2-family (q/k/v biases) with SmolLM2's tokenizer (Qwen's is not available offline)."""
    return _tiny("Qwen2Config", {}, len(smollm_tokenizer), seed=1)


@pytest.fixture(scope="session")
def tiny_gemma3(gemma_tokenizer):
    """Gemma-3 text model (sliding-window + global layers) with Gemma-3's 262k tokenizer."""
    return _tiny("Gemma3TextConfig", {"head_dim": 16, "sliding_window": 8,
                                      "layer_types": ["sliding_attention", "full_attention"]},
                 len(gemma_tokenizer), seed=2)


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from raglign.models.registry import load_tokenizer

    return load_tokenizer("minilm-l6")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_tokenizer):
    """A random 2-layer, 32-wide BERT with the real MiniLM tokenizer, as a plain HF directory
    (a stand-in for MiniLM as encoder, bi-encoder or cross-encoder base)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(minilm_tokenizer), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(cfg).save_pretrained(path)
    minilm_tokenizer.save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- servers
# OpenAI-compatible servers on loopback (tests/test_http_backend.py, tests/test_label_llm.py):
# started once per session, stopped by pid; a test skips when the server package is missing.
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(cmd: list[str], port: int, log: Path, ready_path: str, timeout: float = 180,
          base_path: str = "/v1", env: dict[str, str] | None = None):
    """Start ``cmd`` (``env`` added to its environment), wait until ``GET ready_path`` answers
    200, yield the base URL (``http://127.0.0.1:PORT`` + ``base_path``), stop it by its pid."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **(env or {})))
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {timeout}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}{base_path}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_llama, smollm_tokenizer) -> str:
    """The tiny Llama saved to disk, as a generator path for jobs that load it themselves."""
    path = tmp_path_factory.mktemp("tiny-llm")
    tiny_llama.save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return str(path)


def kill_cli_when(args: list[str], done, what: str, timeout: float = 120) -> None:
    """Run ``python -m raglign ARGS`` and SIGKILL its whole process group once ``done()`` is
    true (the state a resumption test starts from); fail if it ends first or takes too long."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "raglign", *args], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not done():
            assert proc.poll() is None, f"the run ended before {what}"
            assert time.monotonic() < deadline, f"not {what} within {timeout} s"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def smollm_dir() -> str:
    from raglign.models.registry import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def transformers_server(tmp_path_factory, smollm_dir):
    """``transformers serve`` pinned to the SmolLM2 directory, on CPU in float32 (bf16 matmuls
    are several times slower on CPUs without bf16 units)."""
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        pytest.skip("transformers serve needs the extra transformers[serving] (raglign[serving])")
    port = _free_port()
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", smollm_dir,
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    with serve(cmd, port, tmp_path_factory.mktemp("tserve") / "log", "/health") as url:
        yield url


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """llama.cpp's OpenAI server (llama-cpp-python) on the packaged SmolLM2 Q4_1 GGUF."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama.cpp's server needs the extra llama-cpp-python[server]")
    from raglign.models.registry import _smollm2_gguf

    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(_smollm2_gguf()),
           "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "512", "--n_threads", "2", "--logits_all", "true", "--verbose", "false"]
    with serve(cmd, port, tmp_path_factory.mktemp("llama") / "log", "/v1/models") as url:
        yield url


@pytest.fixture(scope="session")
def bench_module():
    """``load(name)``: the script ``benchmarks/<name>.py`` as a module (``benchmarks/`` is not a
    package; its scripts import each other by name, so the folder goes on ``sys.path``)."""
    def load(name: str):
        if str(REPO / "benchmarks") not in sys.path:
            sys.path.insert(0, str(REPO / "benchmarks"))
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    return load
