"""The ranks of a run started with `accelerate launch --num_processes N` (issue 8).

One small object the stages ask: which rank am I, how many are there, am I the one that writes
shared files (rank 0), and wait for the others / gather their results. Started by a plain
`sparring run` (no WORLD_SIZE in the environment) it is a single rank and every method is a no-op,
so a one-process run does exactly what it did before this module existed (no process group, no
accelerate state).

Under `accelerate launch` the process group comes from accelerate's `PartialState`, with the gloo
backend: sparring's models and tensors live on the CPU today (generation, judging and training all
run there), so what the ranks exchange are CPU tensors and pickled results, which NCCL cannot carry.
Every rank holds the whole model (training sums gradients over the ranks, see sparring.train), so
FSDP and DeepSpeed launches are refused rather than silently run unsharded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class Dist:
    def __init__(self) -> None:
        self._state = None
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            from sparring.errors import UserError

            for flag, what in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
                if os.environ.get(flag, "false").lower() in ("1", "true"):
                    raise UserError(f"this is a {what} launch, but sparring's training keeps a whole model on every "
                                    "rank and does not shard it yet; launch with accelerate/ddp.yaml or "
                                    "accelerate/cpu-2proc.yaml (see docs/distributed.md)")
            # cpu=True: gloo, which carries the CPU tensors sparring exchanges (see the module docstring)
            self._state = PartialState(cpu=True)
            self.rank, self.world = self._state.process_index, self._state.num_processes

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes shared files, the manifest and logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """Wait until every rank is here (a stage boundary: what rank 0 wrote before is visible)."""
        if self.active:
            self._state.wait_for_everyone()

    def mine(self, items: Sequence[T]) -> list[T]:
        """This rank's share of `items`, round-robin (item i goes to rank i mod N)."""
        return list(items[self.rank :: self.world])

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank (pickled; for results, not tensors)."""
        if not self.active:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def all_reduce_sum_(self, tensor):
        """Sum `tensor` over the ranks, in place (the same sum lands on every rank)."""
        if self.active:
            import torch.distributed as td

            td.all_reduce(tensor, op=td.ReduceOp.SUM)
        return tensor


_CURRENT: Dist | None = None


def current() -> Dist:
    """The process's ranks (made once: the process group is joined once)."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = Dist()
    return _CURRENT


def merge_round_robin(parts: list[list[T]]) -> list[T]:
    """Undo `Dist.mine`: parts[r] holds items r, r+N, r+2N, ...; returns them in item order."""
    out: list[T] = []
    longest = max((len(p) for p in parts), default=0)
    for i in range(longest):
        out += [p[i] for p in parts if i < len(p)]
    return out
