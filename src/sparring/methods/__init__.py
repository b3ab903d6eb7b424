"""Methods: how one iteration's samples and preferences become training rows, and which loss
trains on them. The method is chosen by name in config (`method.name`); the trainer never branches
on it: it computes the log-probabilities of the sequences a method names and hands them to the
method's `loss`. See docs/methods.md.
"""

from __future__ import annotations

from sparring.methods.base import Method, PromptGroup, SeqLogp
from sparring.methods.dpo import DNO, DPO, FDPO, IPO, SIMPO
from sparring.methods.nash_md import NASH_MD
from sparring.methods.spin import SPIN
from sparring.methods.sppo import SPPO, SPPO_ALL, SPPO_SINGLE

METHODS: dict[str, Method] = {
    m.name: m for m in (SPPO, SPPO_ALL, SPPO_SINGLE, DPO, IPO, FDPO, SIMPO, DNO, SPIN, NASH_MD)
}


def get_method(name: str) -> Method:
    return METHODS[name]


__all__ = ["METHODS", "Method", "PromptGroup", "SeqLogp", "get_method"]
