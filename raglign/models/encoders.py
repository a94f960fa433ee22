"""Sentence encoders: a transformers ``AutoModel`` with pooling, in plain torch.

One :class:`Encoder` serves dense retrieval, rationale similarity and the tower of the
bi-encoder reranker, so the three can never disagree on tokenisation, pooling or normalisation.
It is an ``nn.Module`` (trainable with any torch loop) rather than a wrapped
``SentenceTransformer`` because training code needs gradients through :meth:`Encoder.embed`
and full control of device and dtype; interoperability comes from the file format instead:

* it *reads* sentence-transformers directories (``modules.json`` with Transformer → Pooling
  (mean or CLS) → optional Normalize, in both the legacy 2.x layout and the 6.x layout) and plain
  Hugging Face model directories (mean pooling + normalisation, the common default);
* it *writes* the legacy sentence-transformers layout, which every sentence-transformers version
  since 2.0 loads (``SentenceTransformer(path)``), with the weights as plain safetensors that
  ``AutoModel.from_pretrained`` also loads.

Modules it cannot reproduce exactly (Dense projections, max/weighted pooling …) are refused with
a :class:`~raglign.errors.ConfigError` naming the file, never approximated.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raglign.errors import ConfigError
from raglign.batching import ENCODER_TOKEN_BUDGET, forward_length_sorted, token_budget
from raglign.models.registry import resolve_model

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")
DEFAULT_MAX_LENGTH = 512


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` picks CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``"bfloat16"``/``"bf16"``/``"float16"``/``"float32"`` or a torch dtype; ``None`` → fp32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    if dtype not in names:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


@dataclass(frozen=True)
class SentenceLayout:
    """What a model directory says about how to turn token states into one vector."""

    transformer_dir: Path  # where config.json / weights / tokenizer live
    pooling: str  # "mean" | "cls"
    normalize: bool  # the model's output is L2-normalised (a Normalize module)
    max_length: int | None  # sentence-transformers' max_seq_length, when the directory says
    lowercase: bool  # legacy sentence-transformers ``do_lower_case``
    similarity: str | None  # sentence-transformers' similarity_fn_name ("cosine" | "dot")
    is_sentence_transformer: bool


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None


def _pooling_mode(config: dict, source: Path) -> str:
    if "pooling_mode" in config:  # sentence-transformers >= 6
        mode = config["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode)
    else:  # the legacy boolean flags
        modes = [k[len("pooling_mode_"):].removesuffix("_token").removesuffix("_tokens")
                 for k, v in config.items() if k.startswith("pooling_mode_") and v]
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise ConfigError(f"{source}: pooling {modes} is not supported; raglign encoders "
                          f"implement exactly one of {POOLINGS}")
    return modes[0]


def read_layout(path: str | os.PathLike) -> SentenceLayout:
    """The pooling/normalisation layout of a local model directory.

    A directory with ``modules.json`` is read as a sentence-transformers model; any other is a
    plain transformers checkpoint, given mean pooling and normalisation (what sentence-transformers
    itself assumes when it wraps one).
    """
    root = Path(path)
    modules_file = root / "modules.json"
    st_config = root / "config_sentence_transformers.json"
    similarity = _read_json(st_config).get("similarity_fn_name") if st_config.exists() else None
    if not modules_file.exists():
        return SentenceLayout(root, "mean", True, None, False, similarity, False)
    modules = _read_json(modules_file)
    transformer_dir, pooling, normalize = None, None, False
    for i, m in enumerate(modules):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        sub = root / m.get("path", "")
        if kind == "Transformer" and transformer_dir is None and i == 0:
            transformer_dir = sub
        elif kind == "Pooling" and pooling is None:
            pooling = _pooling_mode(_read_json(sub / "config.json"), sub / "config.json")
        elif kind == "Normalize" and not normalize:
            normalize = True
        else:
            raise ConfigError(f"{modules_file}: module {i} ({m.get('type')}) is not supported; "
                              "raglign encoders read Transformer → Pooling → optional Normalize")
    if transformer_dir is None or pooling is None:
        raise ConfigError(f"{modules_file}: expected a Transformer module first and a Pooling "
                          "module")
    bert_config = {}
    for folder in (transformer_dir, root):
        if (folder / "sentence_bert_config.json").exists():
            bert_config = _read_json(folder / "sentence_bert_config.json")
            break
    return SentenceLayout(transformer_dir, pooling, normalize, bert_config.get("max_seq_length"),
                          bool(bert_config.get("do_lower_case", False)), similarity, True)


def model_max_length(config, tokenizer, layout_max: int | None, requested: int | None) -> int:
    """The token limit: requested > the directory's max_seq_length > tokenizer's > 512.

    Always capped by the model's position embeddings, so a tokenizer that reports a huge
    ``model_max_length`` (a common placeholder) cannot overflow them.
    """
    cap = getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH
    if requested is not None:
        if requested > cap:
            raise ConfigError(f"max_length {requested} exceeds the model's {cap} positions")
        return requested
    if layout_max:
        return min(layout_max, cap)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max <= 100_000:
        return min(tok_max, cap)
    return min(DEFAULT_MAX_LENGTH, cap)


class Encoder(torch.nn.Module):
    """Texts → one vector each: transformer → pooling (mean/CLS) → optional L2 normalisation.

    :meth:`embed` keeps gradients (training); :meth:`encode` is the batched, no-grad,
    length-sorted inference path returning float32 numpy arrays (retrieval, similarity).
    """

    def __init__(self, model, tokenizer, pooling: str = "mean", normalize: bool = True,
                 max_length: int = DEFAULT_MAX_LENGTH, lowercase: bool = False,
                 token_budget: int | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.model = model
        # Pooling reads last_hidden_state, so a checkpoint's own pooler (BERT's tanh layer) never
        # gets a gradient; freezing it keeps DDP from failing on unused parameters. It is still
        # saved, so sentence-transformers and AutoModel load the same weights.
        pooler = getattr(model, "pooler", None)
        if isinstance(pooler, torch.nn.Module):
            pooler.requires_grad_(False)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.lowercase = lowercase
        self.token_budget = token_budget  # None: batching.ENCODER_TOKEN_BUDGET's

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.lowercase:
            texts = [t.lower() for t in texts]
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text after truncation, as :meth:`tokenize` would produce them."""
        if self.lowercase:
            texts = [t.lower() for t in texts]
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return [len(x) for x in ids]

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool token states exactly as sentence-transformers does (float32 accumulation)."""
        if self.pooling == "cls":
            return hidden[:, 0].float()
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        summed = (hidden.float() * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1e-9)

    def embed(self, texts: list[str], normalize: bool | None = None) -> torch.Tensor:
        """``[len(texts), dim]`` float32 embeddings with gradients, in input order.

        The texts run in length-sorted micro-batches of at most ``token_budget`` padded tokens
        (a text's embedding does not depend on its batch-mates): 4 training groups of HotpotQA
        paragraphs padded as one batch pad to 1.94x their tokens and ran forward+backward 4.2x
        slower on a CPU core than in 1024-token pieces (docs/benchmarks.md, "Padding"; the CPU
        default is now 512, :data:`raglign.batching.ENCODER_TOKEN_BUDGET` says why).
        """
        texts = list(texts)

        def forward(idx: list[int]) -> torch.Tensor:
            enc = self.tokenize([texts[i] for i in idx])
            return self.pool(self.model(**enc).last_hidden_state, enc["attention_mask"])

        budget = token_budget(self.device, self.token_budget, ENCODER_TOKEN_BUDGET)
        emb = forward_length_sorted(self.token_lengths(texts), budget, forward)
        if self.normalize if normalize is None else normalize:
            emb = F.normalize(emb, p=2, dim=-1)
        return emb

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 32,
               normalize: bool | None = None) -> np.ndarray:
        """``[len(texts), dim]`` float32 array; ``normalize=None`` keeps the model's own setting.

        Texts are sorted by length so each batch pads little (the order of the result is the
        order of ``texts``); the module is put in eval mode for the call and restored after.
        """
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                emb = self.embed([texts[i] for i in idx], normalize=normalize)
                out[idx] = emb.cpu().numpy()
        finally:
            self.train(was_training)
        return out

    def save(self, path: str | os.PathLike, similarity: str = "cosine",
             model_card: str | None = None) -> None:
        """Write a sentence-transformers directory (legacy layout, loadable by every version).

        The weights and tokenizer sit at the root (so ``AutoModel.from_pretrained(path)`` also
        works), ``1_Pooling/config.json`` records the pooling and ``2_Normalize`` is present iff
        the model normalises.
        """
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(root)
        self.tokenizer.save_pretrained(root)
        modules = [{"idx": 0, "name": "0", "path": "",
                    "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling"}]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
            (root / "2_Normalize").mkdir(exist_ok=True)
        (root / "1_Pooling").mkdir(exist_ok=True)
        pooling = {"word_embedding_dimension": self.dim,
                   "pooling_mode_cls_token": self.pooling == "cls",
                   "pooling_mode_mean_tokens": self.pooling == "mean",
                   "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
        files = {
            "modules.json": modules,
            "1_Pooling/config.json": pooling,
            "sentence_bert_config.json": {"max_seq_length": self.max_length,
                                          "do_lower_case": self.lowercase},
            "config_sentence_transformers.json": {"similarity_fn_name": similarity,
                                                  "prompts": {}, "default_prompt_name": None},
        }
        for name, content in files.items():
            (root / name).write_text(json.dumps(content, indent=2) + "\n")
        if model_card is not None:
            (root / "README.md").write_text(model_card)


def load_encoder(name_or_path: str, max_length: int | None = None, device=None, dtype=None,
                 pooling: str | None = None, normalize: bool | None = None) -> Encoder:
    """An :class:`Encoder` from a packaged short name (``minilm-l6``), a local dir or a hub id.

    ``pooling``/``normalize`` override what the directory says (needed only for plain transformers
    checkpoints whose intended pooling is CLS, e.g. BGE/GTE-style models saved without
    sentence-transformers files). ``max_length=None`` keeps the model's own limit.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = resolve_model(name_or_path)
    layout = read_layout(path) if Path(path).is_dir() else SentenceLayout(
        Path(path), "mean", True, None, False, None, False)
    src = str(layout.transformer_dir)
    config = AutoConfig.from_pretrained(src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModel.from_pretrained(src, dtype=resolve_dtype(dtype))
    encoder = Encoder(model, tokenizer,
                      pooling=pooling or layout.pooling,
                      normalize=layout.normalize if normalize is None else normalize,
                      max_length=model_max_length(config, tokenizer, layout.max_length, max_length),
                      lowercase=layout.lowercase)
    return encoder.to(resolve_device(device)).eval()
