"""The papers' prompts, and how a QA prompt splits for parallel prefill.

Every backend (transformers, vLLM, HTTP) and the document engine build prompts here, so a score
computed by one is comparable with another. The QA prompt is FlashRAG's, used by RADIO and
G-Rerank: the documents go into the system message, the question into the user turn.

For parallel prefill a rendered prompt is cut at the reference block into
``prefix | doc_1 … doc_n | suffix``: each document is encoded as a continuation of the prefix,
the suffix (end of system turn, question, assistant header) and the answer run after all of them.
``render_concat`` writes the very same strings one after another: the exact reference.
"""

from __future__ import annotations

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


def rationale_prompt(tokenizer: Any, question: str, answer: str) -> str:
    """RADIO's rationale prompt, as a user turn when the model has a chat template."""
    text = RATIONALE_PROMPT.format(question=question, answer=answer)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


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
