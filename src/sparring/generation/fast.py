"""Two CPU decode-time fixes for HF models, used by sparring's sampler.

Profiling a SmolLM2-135M decode step (batch 32, bf16, 1 thread) showed 37% of the time in the CPU
flash-attention kernel (10 ms a call for a single query row) and 19% in `torch.cat` of the KV cache
(the whole cache is copied at every step). Both are overhead, not arithmetic:
- `decode` attention: for one query token, a grouped matmul (no key/value repetition) and a
  float32 softmax; longer queries (the prefill) go to the regular SDPA path;
- `BlockCache`: cache layers that grow in blocks of 128 positions and write new keys/values in
  place, so a step copies one token's keys, not the whole cache.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "sparring_decode"


def decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    if query.shape[2] != 1 or module.training or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    b, h, _, d = query.shape
    kvh = key.shape[1]
    q = query.reshape(b, kvh, h // kvh, d)  # the query heads sharing one key/value head, side by side
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * (scaling if scaling is not None else d**-0.5)
    if attention_mask is not None:
        mask = attention_mask[..., -1:, :]  # [B, 1, 1, L]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # [B, kvh, groups, D]
    return out.reshape(b, h, 1, d).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, decode_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


class BlockLayer(DynamicLayer):
    """A DynamicLayer whose storage grows by `block` positions and is written in place."""

    block = 128

    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k = self._v = None
        self._len = 0

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self._k is None or self._len + n > self._k.shape[-2]:
            cap = -(-(self._len + n) // self.block) * self.block + self.block
            k = key_states.new_empty((*key_states.shape[:-2], cap, key_states.shape[-1]))
            v = value_states.new_empty((*value_states.shape[:-2], cap, value_states.shape[-1]))
            if self._len:
                k[..., : self._len, :] = self._k[..., : self._len, :]
                v[..., : self._len, :] = self._v[..., : self._len, :]
            self._k, self._v = k, v
        self._k[..., self._len : self._len + n, :] = key_states
        self._v[..., self._len : self._len + n, :] = value_states
        self._len += n
        self.keys, self.values = self._k[..., : self._len, :], self._v[..., : self._len, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._len:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[..., : self._len, :], self._v[..., : self._len, :]


def block_cache(model) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    if all(type(layer) is DynamicLayer for layer in cache.layers):  # plain full-attention models only
        cache.layers = [BlockLayer() for _ in cache.layers]
    return cache


def use_decode_attention(model) -> None:
    """Switch a model to the decode attention (no-op for models that do not support the switch)."""
    try:
        model.set_attn_implementation(ATTENTION)
    except (AttributeError, ValueError, NotImplementedError):
        pass
