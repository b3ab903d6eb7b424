"""The prompt record every layer shares: an id, a chat conversation, an optional reference response
and task metadata.

A prompt is task-agnostic. `messages` is OpenAI's chat format, a list of {"role", "content"}: a plain
prompt is one user turn; a system turn may come first and earlier user/assistant turns may precede
the last one, which is always the user's (the policy answers it). What a task needs beyond that lives
in `meta` (IFEval's `instruction_id_list` and `kwargs`, say), not in the record's shape, so a judge
that does not read it never sees it.

`fingerprint(prompt)` is a stable hash of what can change a judge's verdict on a prompt (its
messages, its reference response and its metadata): the judge cache keys on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: tuple[Mapping[str, str], ...]
    reference: str | None = None  # a ground-truth answer to the last user turn (SPIN trains on it)
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The last user turn: what a response answers (and what IFEval's files call the prompt)."""
        return self.messages[-1]["content"]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "messages": [dict(m) for m in self.messages]}
        if self.reference is not None:
            out["reference_response"] = self.reference
        out.update({k: v for k, v in self.meta.items() if k not in out})
        return out


def user_prompt(id: str, text: str, reference: str | None = None, **meta: Any) -> Prompt:
    """A one-turn prompt."""
    return Prompt(id=str(id), messages=({"role": "user", "content": text},), reference=reference, meta=meta)


def messages_problem(messages: Any) -> str | None:
    """What is wrong with a chat conversation given as a prompt, or None when it is usable:
    a non-empty list of {"role", "content"} objects, roles system/user/assistant, a system turn only
    first, string contents, and a last turn that is the user's with non-blank content."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        return "must be a non-empty list of {role, content} objects"
    for n, m in enumerate(messages):
        if not isinstance(m, Mapping):
            return f"turn {n} must be an object with 'role' and 'content', got {type(m).__name__}"
        extra = set(m) - {"role", "content", "name"}
        if "role" not in m or "content" not in m:
            return f"turn {n} needs both 'role' and 'content'"
        if extra:
            return f"turn {n} has unknown key(s) {sorted(extra)} (a turn has 'role' and 'content')"
        if m["role"] not in ROLES:
            return f"turn {n} has role {m['role']!r}; roles are {', '.join(ROLES)}"
        if not isinstance(m["content"], str):
            return f"turn {n} ({m['role']}) content must be a string, got {type(m['content']).__name__}"
        if m["role"] == "system" and n != 0:
            return f"turn {n} is a system turn; a system turn may only come first"
    if messages[-1]["role"] != "user":
        return f"the last turn is the {messages[-1]['role']}'s; it must be the user's (the turn the policy answers)"
    if not messages[-1]["content"].strip():
        return "the last user turn is empty"
    return None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def fingerprint(prompt: Prompt) -> str:
    """sha256 (hex) of the canonical JSON of the prompt's messages, reference and metadata; not its id,
    so the same prompt in two prompt sets shares judge-cache entries."""
    payload = {"messages": [dict(m) for m in prompt.messages], "reference": prompt.reference, "meta": dict(prompt.meta)}
    return hashlib.sha256(_canonical(payload).encode("ascii")).hexdigest()
