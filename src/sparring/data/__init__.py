"""Prompt loading and the prompt sets shipped with sparring (ifeval_train.jsonl, ifeval_heldout.jsonl)."""

from sparring.data.prompts import (
    PromptRecord,
    load_prompts,
    load_responses,
    shipped_prompts,
    write_prompts,
)

__all__ = ["PromptRecord", "load_prompts", "load_responses", "shipped_prompts", "write_prompts"]
