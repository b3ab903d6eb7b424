"""Methods: how one iteration's samples and preferences become training rows, and which loss
trains on them. The method is chosen by name in config (`method.name`); the trainer never branches
on it: it computes the log-probabilities of the sequences a method names and hands them to the
method's `loss`.
"""

from __future__ import annotations

from sparring.methods.base import Method, PromptGroup
from sparring.methods.sppo import SPPO

METHODS: dict[str, Method] = {m.name: m for m in (SPPO,)}


def get_method(name: str) -> Method:
    return METHODS[name]


__all__ = ["METHODS", "Method", "PromptGroup", "get_method"]
