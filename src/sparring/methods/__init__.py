"""Methods: how one iteration's samples and preferences become training rows, and which loss
trains on them (by name, from sparring.losses.LOSSES). The method is chosen by name in config
(`method.name`); neither the runner nor the trainer branches on it: a method declares how it samples,
what its prompts need, its row schema, its settings and its hooks (methods/base.py), and the trainer
computes the log-probabilities of the sequences it names and hands them to its loss. See docs/methods.md.
"""

from __future__ import annotations

from sparring.methods.base import Draw, Method, PromptGroup, SeqLogp
from sparring.methods.disco import DISCO
from sparring.methods.dpo import DNO, DPO, FDPO, IPO, SIMPO
from sparring.methods.hooks import Hook, hooks_for
from sparring.methods.nash_md import NASH_MD
from sparring.methods.spin import SPIN
from sparring.methods.sppo import SPPO, SPPO_ALL, SPPO_SINGLE

METHODS: dict[str, Method] = {
    m.name: m for m in (SPPO, SPPO_ALL, SPPO_SINGLE, DPO, IPO, FDPO, SIMPO, DNO, SPIN, NASH_MD, DISCO)
}


def get_method(name: str) -> Method:
    return METHODS[name]


__all__ = ["METHODS", "Draw", "Hook", "Method", "PromptGroup", "SeqLogp", "get_method", "hooks_for"]
