"""The ranks of a run started with `accelerate launch --num_processes N` (issue 8).

One small object the stages ask: which rank am I, how many are there, am I the one that writes
shared files (rank 0), where do my models live, and wait for the others / gather their results.
Started by a plain `sparring run` (no WORLD_SIZE in the environment) it is a single rank and every
collective is a no-op, so a one-process run does exactly what it did before this module existed
(no process group, no accelerate state).

Device: each rank's models and tensors go to its own GPU when CUDA is available (accelerate's
PartialState picks cuda:LOCAL_RANK and joins the group over NCCL), else they stay on the CPU and the
group uses gloo. What the ranks exchange is either a tensor on that device (gradients, a loss) or a
pickled result (`all_gather_object`, which both backends carry).

Sharding: a plain launch (accelerate/ddp.yaml, cpu-2proc.yaml) keeps a whole model on every rank
and training sums the gradients itself (sparring.train). An FSDP launch (accelerate/fsdp.yaml,
fsdp_version 2) shards the *training* model over the ranks with torch's FSDP2 `fully_shard`, which
sparring calls itself (`shard`), not through `Accelerator.prepare`: accelerate 1.15 turns an FSDP
plugin into FSDP only on GPU-like devices (on the CPU, `Accelerator(cpu=True, fsdp_plugin=...)`
silently wraps in DDP instead), so calling `fully_shard` directly is what lets the same code run,
and be tested, on gloo. DeepSpeed launches are refused (not installed here, not verified).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class Dist:
    def __init__(self) -> None:
        import torch

        self._state = None
        self.rank, self.world = 0, 1
        self.fsdp = False  # an FSDP launch: the training model is sharded over the ranks (`shard`)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState
            from sparring.errors import UserError

            if _flag("ACCELERATE_USE_DEEPSPEED"):
                raise UserError(
                    "this is a DeepSpeed launch, which sparring does not support (not verified); launch "
                    "with accelerate/fsdp.yaml to shard the model, or accelerate/ddp.yaml "
                    "(see docs/distributed.md)"
                )
            self.fsdp = _flag("ACCELERATE_USE_FSDP")
            if self.fsdp and os.environ.get("FSDP_VERSION", "1") != "2":
                raise UserError(
                    "sparring shards with FSDP2: set fsdp_version: 2 in the accelerate config "
                    "(as accelerate/fsdp.yaml does)"
                )
            if self.fsdp and _flag("FSDP_OFFLOAD_PARAMS"):
                raise UserError("fsdp_offload_params is not supported by sparring's FSDP training; set it to false")
            # without CUDA: gloo on the CPU; with it: NCCL, each rank on cuda:LOCAL_RANK
            self._state = PartialState(cpu=not torch.cuda.is_available())
            self.rank, self.world = self._state.process_index, self._state.num_processes

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes shared files, the manifest and logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def one_node(self) -> bool:
        """All ranks run on this machine (torchrun's LOCAL_WORLD_SIZE equals WORLD_SIZE). Files that need
        one host, such as the judge cache (SQLite's WAL mode shares memory between its users), may be
        opened by every rank only then."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.world)) >= self.world

    @property
    def device(self):
        """Where this rank's models and tensors go: its GPU when CUDA is available (cuda:LOCAL_RANK
        under a launch, cuda:0 alone), else the CPU. CUDA_VISIBLE_DEVICES= keeps a run on the CPU."""
        import torch

        if self._state is not None:
            return torch.device(self._state.device)
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")

    def shard(self, model, layer_classes: Sequence[str] | None = None):
        """Under an FSDP launch, shard `model` (already on `device`) in place with FSDP2: each
        transformer layer one unit (the config's fsdp_transformer_layer_cls_to_wrap, else the model's
        `_no_split_modules`), the rest (embeddings, final norm, the LM head tied to them) the root
        unit. Otherwise a no-op. Returns the model."""
        if not self.fsdp:
            return model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        names = layer_classes or [c for c in os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c]
        names = set(names or getattr(model, "_no_split_modules", None) or ())
        reshard = _flag("FSDP_RESHARD_AFTER_FORWARD", "true")
        mesh = init_device_mesh(self.device.type, (self.world,))
        layers = [m for m in model.modules() if type(m).__name__ in names]
        if not layers:
            from sparring.errors import UserError

            raise UserError(
                f"FSDP: no module of {sorted(names)} in {type(model).__name__}; set "
                "fsdp_transformer_layer_cls_to_wrap in the accelerate config"
            )
        for layer in layers:
            fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
        return model

    def full_state_dict(self, model) -> dict:
        """The whole, unsharded state dict of a model `shard` sharded, on the CPU of rank 0 (the
        other ranks get {}); every rank must call it (it gathers). Unsharded models: their own."""
        if not self.fsdp:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

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


def _flag(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).lower() in ("1", "true")


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
