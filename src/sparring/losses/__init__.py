"""Preference-optimization losses: small pure functions on 1-D tensors.

Every loss takes one entry per example (sequence log-probs summed over response tokens unless the
loss says otherwise), returns the per-example loss as a 1-D tensor (no reduction, differentiable)
and raises ``ValueError`` naming the offending argument when called wrongly. ``disco`` couples the
samples of a question (its ``group``): its entries are each sample's share of the question's loss.
See docs/losses.md.

A method (``sparring.methods``, chosen by ``method.name`` in config) names its loss by its ``LOSSES``
key, and the trainer looks it up with ``get_loss`` rather than an ``if loss_type == ...`` chain.

Two modifiers apply on top of any pairwise loss and are not losses themselves: ``ld_logps`` (LD-DPO's
length-desensitized sequence log-probs, from per-token ones) and ``madpo_weight`` (MADPO's per-pair
weight from the judge's margin).
"""

from __future__ import annotations

import difflib
from typing import Callable

from sparring.losses.disco import disco
from sparring.losses.dpo import dpo, hinge, ipo, robust_dpo
from sparring.losses.fdpo import DIVERGENCES, fdpo
from sparring.losses.ld import ld_logps
from sparring.losses.madpo import madpo_coefficient, madpo_weight
from sparring.losses.nash import nash_md_pg
from sparring.losses.npo import npo
from sparring.losses.simpo import simpo
from sparring.losses.sppo import sppo, sppo_hard, sppo_pointwise, sppo_single

LOSSES: dict[str, Callable] = {
    "dpo": dpo,
    "robust_dpo": robust_dpo,
    "ipo": ipo,
    "hinge": hinge,
    "sppo": sppo,
    "sppo_single": sppo_single,
    "sppo_hard": sppo_hard,
    "sppo_pointwise": sppo_pointwise,
    "fdpo": fdpo,
    "simpo": simpo,
    "npo": npo,
    "nash_md_pg": nash_md_pg,
    "disco": disco,
}


def get_loss(name: str) -> Callable:
    """The loss function registered under ``name`` (a key of ``LOSSES``).

    An unknown name raises ``ValueError`` naming it, the closest registered name, and all of them.
    """
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        pass
    close = difflib.get_close_matches(str(name), LOSSES, n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown loss {name!r}{hint} (valid losses: {', '.join(sorted(LOSSES))})")


__all__ = [
    "DIVERGENCES",
    "LOSSES",
    "get_loss",
    "dpo",
    "robust_dpo",
    "ipo",
    "hinge",
    "sppo",
    "sppo_single",
    "sppo_hard",
    "sppo_pointwise",
    "fdpo",
    "simpo",
    "npo",
    "nash_md_pg",
    "disco",
    "ld_logps",
    "madpo_coefficient",
    "madpo_weight",
]
