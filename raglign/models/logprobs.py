"""Answer-token log-probabilities out of what vLLM and OpenAI-compatible servers return.

Two shapes reach us, and both are parsed here so the backends stay thin:

* **vLLM** ``prompt_logprobs``: one entry per prompt position; position 0 is ``None`` (nothing
  predicts the first token); every other entry maps ``token_id → Logprob(logprob, rank,
  decoded_token)`` holding the top-k tokens *plus the prompt's own token* (so 1 to k+1 keys).
  Across Ray Data the ``Logprob`` dataclasses arrive as plain dicts (``ray.data.llm`` converts them
  with ``dataclasses.asdict``); the int keys survive because Ray Data falls back to pickling the
  column. If rows went through Arrow/Parquet/JSON the keys become strings and every position
  carries the union of keys with ``None`` for the absent ones; both forms are accepted.
* **OpenAI legacy completions** with ``echo=True, logprobs=k``: ``choices[0].logprobs`` holds
  parallel lists ``tokens``, ``token_logprobs`` (first one ``None``) and ``text_offset``
  (character offsets into the echoed text), prompt tokens first, then the generated ones. The
  answer is found by characters counted back from the end of the prompt, since the server
  tokenises the text itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _logprob_value(entry: Any) -> float | None:
    """The ``logprob`` of a vLLM ``Logprob`` dataclass, its dict form, or a bare float."""
    if entry is None:
        return None
    if isinstance(entry, Mapping):
        value = entry.get("logprob")
    elif isinstance(entry, (int, float)):
        value = entry
    else:
        value = getattr(entry, "logprob", None)
    return None if value is None else float(value)


def prompt_token_logprobs(prompt_logprobs: Sequence[Mapping | None], token_ids: Sequence[int],
                          start: int, end: int | None = None) -> list[float]:
    """log p(token_ids[i] | token_ids[:i]) for positions ``start..end`` of a vLLM prompt.

    ``token_ids`` are the prompt's ids as sent (``tokenized_prompt``) or as vLLM echoes them
    (``prompt_token_ids``); ``start`` must be ≥ 1 because position 0 has no prediction. Raises
    ``ValueError`` naming the position when the structure does not match the ids, since a silent
    mismatch would give a plausible-looking but wrong score.
    """
    end = len(token_ids) if end is None else end
    if len(prompt_logprobs) != len(token_ids):
        raise ValueError(f"prompt_logprobs has {len(prompt_logprobs)} positions but the prompt has "
                         f"{len(token_ids)} tokens")
    if not 1 <= start <= end <= len(token_ids):
        raise ValueError(f"answer span [{start}, {end}) is not inside positions 1..{len(token_ids)}"
                         " (position 0 has no log-probability)")
    out = []
    for pos in range(start, end):
        entry = prompt_logprobs[pos]
        tid = int(token_ids[pos])
        if entry is None:
            raise ValueError(f"prompt_logprobs[{pos}] is None (only position 0 may be)")
        value = _logprob_value(entry.get(tid, entry.get(str(tid))))
        if value is None:
            raise ValueError(f"prompt_logprobs[{pos}] has no entry for the prompt token {tid} "
                             f"(keys: {sorted(k for k, v in entry.items() if v is not None)[:8]})")
        out.append(value)
    return out


def echoed_answer_logprobs(logprobs: Mapping[str, Any] | None, answer_chars: int,
                           n_generated: int) -> list[float]:
    """Log-probs of the echoed tokens that spell the last ``answer_chars`` characters of the
    prompt, from ``choices[0]["logprobs"]`` of an OpenAI legacy completion made with ``echo``.

    The span is anchored at the *end* of the echoed prompt, in the server's own ``text_offset``
    coordinates: servers disagree on what offsets count (llama.cpp detokenises chat-template
    special tokens to empty strings, so its offsets are not positions in the prompt we sent), but
    the answer is plain text at the prompt's end either way. The prompt ends where the first of
    the ``n_generated`` tokens (``usage.completion_tokens``) begins. A token that starts before the
    answer but runs into it means the server merged prompt and answer into one token; that is an
    error, not a score with a shifted boundary.
    """
    if not logprobs:
        raise ValueError("the response has no logprobs: the server ignored logprobs/echo "
                         "(it cannot score answers)")
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    offsets = logprobs.get("text_offset") or []
    if not (len(tokens) == len(values) == len(offsets)) or not tokens:
        raise ValueError(f"logprobs lists differ in length or are empty (tokens {len(tokens)}, "
                         f"token_logprobs {len(values)}, text_offset {len(offsets)})")
    n_prompt = len(tokens) - n_generated
    if not 0 < n_prompt <= len(tokens):
        raise ValueError(f"{n_generated} generated tokens but only {len(tokens)} tokens returned: "
                         "the server did not echo the prompt")
    end = offsets[n_prompt] if n_prompt < len(tokens) else offsets[-1] + len(tokens[-1])
    start = end - answer_chars
    out = []
    for tok, value, off in zip(tokens[:n_prompt], values, offsets):
        if off < start < off + len(tok):
            raise ValueError(f"token {tok!r} at character {off} straddles the answer start {start}")
        if off >= start:
            if value is None:
                raise ValueError(f"token {tok!r} at character {off} has no log-probability")
            out.append(float(value))
    if not out or start < 0:
        raise ValueError(f"no echoed token starts inside the answer's last {answer_chars} "
                         "characters: the server did not echo the prompt")
    return out
