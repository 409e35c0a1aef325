"""Records -> token ids with the model's own chat template; batches for training and generation.

Training uses the whole conversation (user prompt + assistant target) and computes the loss on
the assistant part only; generation feeds the prompt with the assistant header appended.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from neft.data.records import DataError, Example

IGNORE_INDEX = -100  # label value the causal-LM loss skips


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def conversation_text(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str) -> str:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": target}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def encode_for_training(tokenizer: PreTrainedTokenizerBase, example: Example, max_length: int) -> EncodedExample | None:
    """Token ids with labels on the target only; None when truncation would leave no target token."""
    prompt = prompt_text(tokenizer, example.prompt)
    full = conversation_text(tokenizer, example.prompt, example.target)
    if not full.startswith(prompt):
        raise DataError("the chat template renders the prompt differently inside a conversation")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + target_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + target_ids)[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return EncodedExample(input_ids=input_ids, labels=labels)


def encode_counted(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int,
                   source: str = "the data") -> tuple[list[EncodedExample], int]:
    """`encode_for_training` of every example, and how many were left out because their prompt alone fills
    `max_length` (nothing of the answer would remain to learn from). Leaving some out prints one warning
    line with the count and the fix; leaving out all is a DataError."""
    encoded = [encode_for_training(tokenizer, example, max_length) for example in examples]
    kept = [item for item in encoded if item is not None]
    dropped = len(encoded) - len(kept)
    if not kept:
        raise DataError(f"every example's prompt is longer than max_length={max_length} ({source}: {dropped} examples); "
                        f"raise task.max_length")
    if dropped:
        print(f"warning: {source}: {dropped} of {len(encoded)} examples have a prompt of max_length={max_length} tokens "
              f"or more and are left out; raise task.max_length to keep them", file=sys.stderr)
    return kept, dropped


def encode_all(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int,
               source: str = "the data") -> list[EncodedExample]:
    """`encode_counted` without the count (the warning line still reports it)."""
    return encode_counted(tokenizer, examples, max_length, source)[0]


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_length: int) -> list[EncodedExample]:
    """Chat-formatted prompts alone, truncated to max_length (for analyses that only read activations)."""
    encoded = []
    for prompt in prompts:
        ids = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"][:max_length]
        encoded.append(EncodedExample(input_ids=ids, labels=ids))
    return encoded


def collate(items: Sequence[EncodedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch for training; padding is masked out of attention and loss."""
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        length = len(item.input_ids)
        input_ids[row, :length] = torch.tensor(item.input_ids)
        labels[row, :length] = torch.tensor(item.labels)
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def training_batches(items: Sequence[EncodedExample], batch_size: int, pad_token_id: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches, reshuffled each epoch from a seeded generator (same seed, same order)."""
    rng = random.Random(seed)
    order = list(range(len(items)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            yield collate([items[i] for i in order[start:start + batch_size]], pad_token_id)


def evaluation_batches(items: Sequence[EncodedExample], batch_size: int, pad_token_id: int) -> list[dict[str, torch.Tensor]]:
    return [collate(items[start:start + batch_size], pad_token_id) for start in range(0, len(items), batch_size)]
