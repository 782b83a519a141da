"""Questions written by the target itself (the Magpie recipe), steered by seed topics.

An instruct model's chat template, cut just after the opening of a user turn, is a prefix the
model has only ever seen followed by a user's request: sampled from there, it writes one, and
ends it with its end-of-turn token. A system message names a topic ("The user asks about
geometry.") so that the questions spread over math, code, writing, reasoning, extraction and
everyday chat instead of the model's favourite few. The answers are written later from the plain
user turn (no steering system message): the contexts the head will draft in.
"""

from __future__ import annotations

import random
from typing import Any

from ...core.errors import InputError
from .generation import complete

# topic -> subjects; a question slot draws (topic, subject) uniformly from a seeded generator
TOPICS: dict[str, tuple[str, ...]] = {
    "math": ("arithmetic word problems", "algebra", "geometry", "probability", "percentages and money",
             "number theory", "calculus", "unit conversions"),
    "code": ("writing a Python function", "fixing a bug in a short program", "algorithms and data structures",
             "SQL queries", "JavaScript", "shell commands", "explaining what a piece of code does"),
    "writing": ("a short story", "a poem", "a formal email", "an essay paragraph", "a product description",
                "rewriting a sentence in another style", "a speech"),
    "reasoning": ("a logic puzzle", "a riddle", "planning a schedule", "comparing two options",
                  "cause and effect", "a brain teaser with a numeric answer"),
    "extraction": ("extracting names, dates and places from a short text they paste",
                   "summarizing a paragraph they paste", "turning a short text they paste into a table",
                   "classifying the sentiment of a review they paste", "answering a question about a passage they paste"),
    "chat": ("travel", "cooking", "health and fitness", "hobbies", "personal advice", "history",
             "science facts", "movies and books"),
}  # fmt: skip
SENTINEL = "\x00QUESTION\x00"


def topic_system(subject: str) -> str:
    return f"You are a helpful AI assistant. The user asks you a question about {subject}."


def user_turn_prefix(tokenizer: Any, system: str | None) -> list[int]:
    """Token ids of the chat template up to where a user's message begins (after its role header)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": SENTINEL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    if SENTINEL not in text:
        raise InputError("the tokenizer's chat template does not show the user's message; Magpie questions need one")
    return tokenizer(text[: text.index(SENTINEL)], add_special_tokens=False)["input_ids"]


def plan_topics(count: int, seed: int, topics: tuple[str, ...]) -> list[tuple[str, str]]:
    """(topic, subject) for each of `count` question slots: topics round-robin, subjects at random."""
    unknown = [t for t in topics if t not in TOPICS]
    if unknown or not topics:
        raise InputError(f"unknown topic {', '.join(unknown) or '(none given)'}; topics: {', '.join(TOPICS)}")
    rng = random.Random(seed)
    return [(topics[i % len(topics)], rng.choice(TOPICS[topics[i % len(topics)]])) for i in range(count)]


def synthesize_questions(
    model: Any, tokenizer: Any, slots: list[tuple[str, str]], eos_ids: list[int], pad_id: int, *,
    max_tokens: int = 128, temperature: float = 1.0, batch_size: int = 256, seed: int = 0, progress: bool = True,
) -> tuple[list[tuple[str, str]], dict[str, int]]:  # fmt: skip
    """-> ([(topic, question text)] for the slots whose question ended within `max_tokens` and
    has at least 3 words, counts of the slots dropped by reason)."""
    prefixes = {s: user_turn_prefix(tokenizer, topic_system(s)) for s in {subject for _, subject in slots}}
    outs = complete(model, [prefixes[s] for _, s in slots], eos_ids, pad_id, max_tokens, batch_size,
                    temperature=temperature, seed=seed, progress=progress, desc="questions")  # fmt: skip
    eos, kept, dropped = set(eos_ids), [], {"unfinished": 0, "too_short": 0}
    for (topic, _), out in zip(slots, outs):
        if not out or out[-1] not in eos:
            dropped["unfinished"] += 1
            continue
        text = tokenizer.decode(out[:-1], skip_special_tokens=True).strip()
        if len(text.split()) < 3:
            dropped["too_short"] += 1
            continue
        kept.append((topic, text))
    return kept, dropped
