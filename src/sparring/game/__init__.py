"""The exact tabular laboratory: self-play preference optimization on a finite preference matrix.

With a finite set of responses and a known matrix P[i, j] = P(y_i ≻ y_j) everything the LLM
pipeline only estimates can be computed exactly: the Nash equilibrium (a linear program), the
exploitability of any policy, the regularised equilibrium of Nash-MD/Nash-MP. The algorithms here
(exact SPPO = multiplicative weights, OMWU, Nash-MD, Nash-MP, and sampled SPPO / iterative DPO
that use the real ``sparring.losses`` and ``sparring.winrates`` code) are measured against them.
See docs/game.md.
"""

from sparring.game.algorithms import (
    ALGORITHMS,
    GameResult,
    default_init,
    dpo_iterative_step,
    nash_md_step,
    nash_mp_step,
    omwu_step,
    run,
    sppo_sampled_step,
    sppo_sampled_tv_bound,
    sppo_step,
)
from sparring.game.equilibrium import (
    best_response_regularized,
    exploitability,
    kl,
    nash_equilibrium,
    regularized_equilibrium,
    regularized_gap,
    tv,
)
from sparring.game.matrices import (
    load_matrix,
    make_matrix,
    random_intransitive,
    rps,
    transitive,
    validate_matrix,
)

__all__ = [
    "ALGORITHMS",
    "GameResult",
    "best_response_regularized",
    "default_init",
    "dpo_iterative_step",
    "exploitability",
    "kl",
    "load_matrix",
    "make_matrix",
    "nash_equilibrium",
    "nash_md_step",
    "nash_mp_step",
    "omwu_step",
    "random_intransitive",
    "regularized_equilibrium",
    "regularized_gap",
    "rps",
    "run",
    "sppo_sampled_step",
    "sppo_sampled_tv_bound",
    "sppo_step",
    "transitive",
    "tv",
    "validate_matrix",
]
