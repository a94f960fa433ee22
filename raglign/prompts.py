"""The papers' prompts, and how a QA prompt splits for parallel prefill.

Every backend (transformers, vLLM, HTTP) and the document engine build prompts here, so a score
computed by one is comparable with another. The QA prompt is FlashRAG's, used by RADIO and
G-Rerank: the documents go into the system message, the question into the user turn.

A generation *task* (:data:`TASKS`: ``qa``, RADIO's ``rationale``, ARL2's ``judge``) is
rendered by :func:`task_messages` (what a chat endpoint receives) and :func:`render_task` (the
same messages rendered locally, for the transformers and vLLM backends and for completions
endpoints): a new task is added in these two functions and every backend sends it.

For parallel prefill a rendered prompt is cut at the reference block into
``prefix | doc_1 … doc_n | suffix``: each document is encoded as a continuation of the prefix,
the suffix (end of system turn, question, assistant header) and the answer run after all of them.
``render_concat`` writes the very same strings one after another: the exact reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

QA_SYSTEM = (
    "Answer the question based on the given document. Only give me the answer and do not output "
    "any other words. The following are given documents.\n{reference}"
)
MC_SYSTEM = (
    "Answer the question based on the given document. Only give me the option (A/B/C/D) and do "
    "not output any other words. The following are given documents.\n{reference}"
)
QA_USER = "Question: {question}\nAnswer:"

RATIONALE_PROMPT = (
    "You are a professional QA assistant. Given a question and the ground truth answer, you can "
    "output the rationale why the ground truth answer is correct. Question: {question}. "
    "Answer: {answer}. Rationale: "
)

JUDGE_PROMPT = (
    "You are given a question, its correct answer and a document. Judge whether the document is "
    "relevant for answering the question with that answer.\n"
    "Question: {question}\nAnswer: {answer}\nDocument: {document}\n"
    "Reply with exactly one of: relevant, partially relevant, not relevant.\nJudgement:"
)

TASKS = ("qa", "rationale", "judge")
# Each task's sampling where the caller gives none (the fields of
# raglign.models.generator.GenerationParams), stated once: the vLLM and HTTP processors' presets
# and the defaults of the signals' options blocks (rationale:, judge:) both read this table.
TASK_SAMPLING: dict[str, dict[str, Any]] = {
    # QA answers: greedy (the papers' reader runs at temperature 0), short.
    "qa": {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0, "seed": 42},
    # RADIO's reference code: temperature 0.2, top_p 1, seed 42, at most 1000 tokens.
    "rationale": {"max_new_tokens": 1000, "temperature": 0.2, "top_p": 1.0, "seed": 42},
    # ARL2's judgement: greedy (a label must not change between runs), a few tokens.
    "judge": {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0},
}

OPTION_LETTERS = "ABCDEFGHIJ"

# A sentinel that no tokenizer merges with its neighbours and no real text contains.
_SLOT = "\u2063RAGLIGN_REFERENCE\u2063"


def format_document(title: str | None, text: str) -> str:
    """One document as it appears in the reference block (FlashRAG style, without a number:
    under parallel prefill a document's text must not depend on its position in the list)."""
    head = f"(Title: {title}) " if title else ""
    return f"{head}{text}\n"


def question_text(question: str, choices: list[str] | None = None) -> str:
    """The question, with lettered options appended for multiple choice."""
    if not choices:
        return question
    opts = "\n".join(f"{OPTION_LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{question}\n{opts}"


def qa_messages(question: str, reference: str, choices: list[str] | None = None) -> list[dict]:
    """Chat messages of the QA prompt with ``reference`` already formatted."""
    system = (MC_SYSTEM if choices else QA_SYSTEM).format(reference=reference)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": QA_USER.format(question=question_text(question, choices))},
    ]


def render_messages(tokenizer: Any, messages: list[dict]) -> str:
    """Render messages with the tokenizer's chat template (generation prompt added), or as plain
    text for base models without one (Gemma-3-270M): system text, blank line, user text."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [m["content"] for m in messages]
    return "\n\n".join(parts)


@dataclass(frozen=True)
class ParallelPrompt:
    """A QA prompt cut for parallel prefill; ``prefix + "".join(docs) + suffix`` is the concat
    prompt."""

    prefix: str
    docs: list[str]
    suffix: str

    def concat(self, keep: list[int] | None = None) -> str:
        """The ordinary prompt with the documents ``keep`` (all by default) written in order."""
        chosen = self.docs if keep is None else [self.docs[i] for i in keep]
        return self.prefix + "".join(chosen) + self.suffix


def parallel_prompt(tokenizer: Any, question: str, documents: list[tuple[str | None, str]],
                    choices: list[str] | None = None) -> ParallelPrompt:
    """Render the QA prompt and cut it around the reference block."""
    rendered = render_messages(tokenizer, qa_messages(question, _SLOT, choices))
    prefix, suffix = rendered.split(_SLOT)
    return ParallelPrompt(prefix, [format_document(t, x) for t, x in documents], suffix)


def qa_prompt(tokenizer: Any, question: str, documents: list[tuple[str | None, str]],
              choices: list[str] | None = None) -> str:
    """The ordinary (concatenated) QA prompt as one string, ready for generation."""
    return parallel_prompt(tokenizer, question, documents, choices).concat()


def task_messages(task: str, question: str, docs: Sequence[tuple[str | None, str]] = (),
                  answer: str | None = None, choices: Sequence[str] | None = None) -> list[dict]:
    """The chat messages of a generation task. ``qa`` reads ``docs`` and ``choices``;
    ``rationale`` the gold ``answer``; ``judge`` the ``answer`` and the one document
    ``docs[0]``. The two one-turn tasks are a single user message."""
    if task == "qa":
        return qa_messages(question, "".join(format_document(t, x) for t, x in docs),
                           list(choices) if choices else None)
    if task == "rationale":
        text = RATIONALE_PROMPT.format(question=question, answer=answer)
    elif task == "judge":
        text = JUDGE_PROMPT.format(question=question, answer=answer,
                                   document=format_document(*docs[0]).strip())
    else:
        raise ValueError(f"unknown generation task {task!r}; known: {', '.join(TASKS)}")
    return [{"role": "user", "content": text}]


def render_task(tokenizer: Any, task: str, question: str,
                docs: Sequence[tuple[str | None, str]] = (), answer: str | None = None,
                choices: Sequence[str] | None = None) -> str | ParallelPrompt:
    """A task's prompt rendered locally (:func:`task_messages` through the chat template). A QA
    prompt stays cut into pieces (:func:`parallel_prompt`), so that every backend tokenises it
    as the document engine does; the other tasks are one rendered string."""
    if task == "qa":
        return parallel_prompt(tokenizer, question, list(docs), list(choices) if choices else None)
    return render_messages(tokenizer, task_messages(task, question, docs, answer, choices))


def prompt_text(prompt: str | ParallelPrompt) -> str:
    """A rendered prompt as one string, for a server that tokenises the text itself."""
    return prompt.concat() if isinstance(prompt, ParallelPrompt) else prompt


def rationale_prompt(tokenizer: Any, question: str, answer: str) -> str:
    """RADIO's rationale prompt, as a user turn when the model has a chat template."""
    return render_task(tokenizer, "rationale", question, answer=answer)


def answer_continuation(tokenizer: Any, answer: str) -> str:
    """The answer as the model should continue the prompt: after a chat template's assistant
    header it starts directly; after a plain "Answer:" it follows a space."""
    return answer if getattr(tokenizer, "chat_template", None) else " " + answer.lstrip()


def encode_piece(tokenizer: Any, text: str, first: bool = False) -> list[int]:
    """Token ids of one piece of a prompt. Pieces (prefix, each document, suffix, answer) are
    tokenised separately and concatenated, in every backend and in the engine alike, so that
    token boundaries never depend on which documents were kept. Only the first piece gets the
    tokenizer's special tokens (BOS), and only when no chat template writes them itself."""
    add = first and not getattr(tokenizer, "chat_template", None)
    return tokenizer(text, add_special_tokens=add)["input_ids"]


def encode_prompt(tokenizer: Any, prompt: str | ParallelPrompt) -> list[int]:
    """Token ids of a whole prompt: a :class:`ParallelPrompt` piece by piece (prefix, each
    document, suffix), exactly the ids the engine and the vLLM backend score; a rendered string
    as one first piece (rationale prompts, or text that was never cut)."""
    if isinstance(prompt, str):
        return encode_piece(tokenizer, prompt, first=True)
    ids = encode_piece(tokenizer, prompt.prefix, first=True)
    for doc in prompt.docs:
        ids += encode_piece(tokenizer, doc)
    return ids + encode_piece(tokenizer, prompt.suffix)
