"""The ``continuation`` task's items: an in-domain, held-out, tokenizer-free multiple-choice task
built from the corpus validation split (data/raw/corpus/validation.jsonl).

Why: both tiny models sit at chance on the shipped lm-eval tasks (ARC-E, PIQA), so a pruning
comparison on those compares chance-level scores; a continuation task on held-out passages of the
training distribution separates the models (and a pruned model from its dense parent).

An item is one *window* of a validation passage, in whitespace words (``text.split()``; the same
items serve every tokenizer)::

    words[o : o + CONTEXT_WORDS]                                  -> context
    words[o + CONTEXT_WORDS : o + CONTEXT_WORDS + ANSWER_WORDS]   -> the true continuation

at offsets ``o = 0, W, 2W, ...`` (``W = CONTEXT_WORDS + ANSWER_WORDS``: windows of one passage never
overlap), at most ``MAX_WINDOWS`` per passage; a passage shorter than one window gives none. The
three distractors are the answer spans at the *same offset* of three *other* validation passages
(long enough to have a window there), chosen by a seeded hash rank; a span textually identical to
the answer or to an earlier distractor is passed over. The answer's place among the four choices
is seeded too. Every choice is scored as a continuation of the context (lm-eval adds the leading
space: ``target_delimiter`` " ").

Like the corpus split (:mod:`srclib.data.build`), every draw is a sha256 of the seed and the
passage *text* (never file order, ``PYTHONHASHSEED`` or the ``random`` module's algorithm), so the
items depend only on the validation passages and the seed; the file is ordered by a seeded hash
too, so lm-eval's ``limit`` (the first N items) takes a random subset.

Span length, measured on the trained tiny twins (all items, lm-eval acc / acc_norm, DLM with
mc_num 4): 12-word answers (401 items) gave tiny-ar 0.332 / 0.347, tiny-dlm 0.302 / 0.344;
4-word answers (508 items) give tiny-ar 0.384 / 0.406, tiny-dlm 0.344 / 0.396. A word span's
token count varies with the passage (BoolQ's Wikipedia text takes more tokens per word than
LAMBADA's fiction), and a summed log-likelihood penalises the longer choice; a shorter span
varies less and weighs the words that follow the context most (BoolQ items with 12-word spans sat
at chance for tiny-ar: 0.25).

This module imports only the standard library.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Mapping, Sequence

__all__ = ["CONTEXT_WORDS", "ANSWER_WORDS", "N_CHOICES", "MAX_WINDOWS", "FIELDS", "RULE",
           "build_items"]

CONTEXT_WORDS = 40
ANSWER_WORDS = 4  # measured on the tiny twins (below): shorter spans separate them better
N_CHOICES = 4  # the answer + 3 distractors: chance 0.25
MAX_WINDOWS = 4  # per passage (the validation split has 405 passages, 376 long enough for one)
FIELDS = ("choices", "context", "id", "label", "offset", "source")
RULE = (f"per validation passage: windows of {CONTEXT_WORDS} + {ANSWER_WORDS} whitespace words at "
        f"word offsets 0, {CONTEXT_WORDS + ANSWER_WORDS}, ... (at most {MAX_WINDOWS}; shorter "
        f"passages skipped); context = the first {CONTEXT_WORDS} words, answer = the next "
        f"{ANSWER_WORDS}; {N_CHOICES - 1} distractors = the {ANSWER_WORDS}-word spans at the same "
        f"offset of other validation passages, ranked by sha256('<seed>\\ndistractor\\n<offset>\\n"
        f"<text>\\n<other text>'), skipping spans equal to the answer or to a taken distractor; "
        f"label = int(sha256('<seed>\\nlabel\\n<offset>\\n<text>')) mod {N_CHOICES}; items ordered "
        f"by sha256('<seed>\\norder\\n<offset>\\n<text>')")


def _key(seed: int, *parts: object) -> str:
    return hashlib.sha256("\n".join(map(str, (seed, *parts))).encode("utf-8")).hexdigest()


def _span(words: Sequence[str], start: int, n: int) -> str:
    return " ".join(words[start:start + n])


def build_items(passages: Iterable[Mapping[str, str]], seed: int = 0) -> list[dict]:
    """The task's items from corpus rows ``{"source", "text"}`` (the validation split).

    Returns rows ``{"id", "source", "offset", "context", "choices", "label"}`` (``choices``: four
    spans without a leading space; ``choices[label]`` is the true continuation), ``id`` = the row's
    place in the returned (seeded hash) order. Raises ValueError when an offset has too few other
    passages to draw distractors from, or when a text occurs twice.
    """
    rows = [(p["source"], p["text"], p["text"].split()) for p in passages]
    if len({t for _, t, _ in rows}) != len(rows):
        raise ValueError("continuation: duplicate passage text")
    window = CONTEXT_WORDS + ANSWER_WORDS
    # offset -> [(text, answer span)] of every passage with a window there
    at: dict[int, list[tuple[str, str]]] = {}
    for _, text, words in rows:
        for k in range(min(MAX_WINDOWS, len(words) // window)):
            o = k * window
            at.setdefault(o, []).append((text, _span(words, o + CONTEXT_WORDS, ANSWER_WORDS)))
    keyed = []
    for source, text, words in rows:
        for k in range(min(MAX_WINDOWS, len(words) // window)):
            o = k * window
            answer = _span(words, o + CONTEXT_WORDS, ANSWER_WORDS)
            ranked = sorted((_key(seed, "distractor", o, text, other), span)
                            for other, span in at[o] if other != text)
            distractors: list[str] = []
            for _, span in ranked:
                if span != answer and span not in distractors:
                    distractors.append(span)
                    if len(distractors) == N_CHOICES - 1:
                        break
            else:
                raise ValueError(f"continuation: offset {o} has too few other passages with a distinct "
                                 f"span for {N_CHOICES - 1} distractors ({len(at[o])} passages)")
            label = int(_key(seed, "label", o, text), 16) % N_CHOICES
            choices = distractors[:label] + [answer] + distractors[label:]
            item = {"source": source, "offset": o, "context": _span(words, o, CONTEXT_WORDS),
                    "choices": choices, "label": label}
            keyed.append((_key(seed, "order", o, text), item))
    keyed.sort(key=lambda kv: kv[0])
    return [{"id": i, **item} for i, (_, item) in enumerate(keyed)]
