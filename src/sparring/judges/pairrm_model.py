"""PairRM (Jiang, Ren & Lin 2023, "LLM-Blender", arXiv:2306.02561) on transformers' DeBERTa-v2.

PairRM is the pairwise preference model of SPPO's published results (Wu et al. 2024, arXiv:2405.00675).
Its own package, llm-blender, cannot be imported on transformers 5, so this module re-implements the
inference path on `transformers.DebertaV2Model` and imports nothing from llm-blender. Facts below were
checked against llm-blender's source (github yuchenlin/LLM-Blender: `llm_blender/pair_ranker/ranker.py`
`CrossCompareReranker`, `collator.py` `CrossCompareCollator`, `pairrm.py` `DebertaV2PairRM`, the README's
PairRM-hf example and `pairrm_to_hf.ipynb`) and against the hub files of llm-blender/PairRM and
llm-blender/PairRM-hf (config.json, added_tokens.json, file lists).

Input: three segments, each encoded separately by the tokenizer as ``[CLS] <prefix>text [SEP]`` and
concatenated (no extra separator): ``[CLS] <|source|>source [SEP] [CLS] <|candidate1|>first [SEP]
[CLS] <|candidate2|>second [SEP]``. The source is cut (from the right, keeping its start; [CLS] and
[SEP] included in the count) at 1224 tokens; each candidate is cut at ``(1224 + 2·412 − len(source)) // 2``
tokens, so 412 is a floor, not a cap: a short source leaves the candidates up to 1022 tokens each. This is
the README's `tokenize_pair`; llm-blender's collator computes the same budget from the longest source of
its batch, which equals ours for batches of one (SPPO's `rank.py` uses ``batch_size=1``). Like the
collator, a literal "[SEP]" in any text is replaced by a space first.

Output: ``h`` = the last hidden states at the three prefix tokens; ``head(x) = Linear(H→n)(Dropout(
tanh(Linear(2H→H)(Dropout(x)))))``; the pair logit is ``mean_tasks(head([h_src; h_c1]) − head([h_src;
h_c2]))`` from one forward pass (PairRM has n = 1 task): positive means `first` beats `second`.

Checkpoints (both store the same tensors, ``pretrained_model.*`` = DebertaV2Model and ``head_layer.{1,4}.*``
= the two Linear layers, in ``model.safetensors``; both ship tokenizer.json with ``[MASK]`` = 128000 and
the added tokens ``<|source|>`` 128001, ``<|candidate1|>`` 128002, ``<|candidate2|>`` 128003,
``<|candidate|>`` 128004):

- llm-blender/PairRM: ``config.json`` (and ``ranker_config.json``) is llm-blender's RankerConfig
  (``ranker_type: "pairranker"``, ``model_name: "microsoft/deberta-v3-large"``, ``source_maxlength: 1224``,
  ``candidate_maxlength: 412``, ...); the backbone's own config is that of `model_name`.
- llm-blender/PairRM-hf: ``config.json`` is a DeBERTa-v2 config (``architectures: ["DebertaV2PairRM"]``,
  ``vocab_size: 128005``) plus ``source_prefix_id``, ``cand1_prefix_id``, ``cand2_prefix_id``,
  ``cand_prefix_id``, ``n_tasks``, ``drop_out``.

The tokenizer is read from tokenizer.json as is (`PreTrainedTokenizerFast`), not through transformers 5's
`DebertaV2Tokenizer`, which rebuilds its normalizer and pre-tokenizer from code and drops the ones in the
file; the published logits were computed with the file's pipeline (transformers 4.x fast tokenizer).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparring.errors import UserError

SOURCE_PREFIX = "<|source|>"
CANDIDATE1_PREFIX = "<|candidate1|>"
CANDIDATE2_PREFIX = "<|candidate2|>"
# llm-blender's collator tokenizes every candidate with this prefix and then overwrites its id with the
# candidate1/candidate2 one; tokenizing with the final prefix directly (as the PairRM-hf README does) gives
# the same ids, because the added prefix tokens are split off before the text is tokenized.
CANDIDATE_PREFIX = "<|candidate|>"
SOURCE_MAX_LENGTH = 1224
CANDIDATE_MAX_LENGTH = 412
WEIGHTS_FILE = "model.safetensors"
BACKBONE_PREFIX = "pretrained_model."
HEAD_PREFIX = "head_layer."
MODES = ("sppo", "direct")

# microsoft/deberta-v3-large, the backbone named by llm-blender/PairRM's config.json. These are the
# architecture fields of llm-blender/PairRM-hf's config.json, which was written by loading PairRM's
# model.safetensors into a DebertaV2Model of exactly this shape (pairrm_to_hf.ipynb, strict load, no key
# missing or unexpected). vocab_size is not here: it is read from the checkpoint's embedding matrix.
DEBERTA_V3_LARGE = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-7,
    "relative_attention": True,
    "max_relative_positions": -1,
    "position_buckets": 256,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": ["p2c", "c2p"],
    "position_biased_input": False,
    "pad_token_id": 0,
}
DEBERTA_V3_LARGE_NAME = "microsoft/deberta-v3-large"

# What a hub snapshot needs; everything else in the repos (training_args.bin, config.bin) is pickle.
_HUB_FILES = [
    "config.json",
    "ranker_config.json",
    WEIGHTS_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
]
_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


class PairRMModule(nn.Module):
    """DeBERTa-v2 encoder + PairRM's head. Attribute names match the checkpoints' key prefixes."""

    def __init__(self, config, n_tasks: int = 1, drop_out: float = 0.05):
        super().__init__()
        from transformers import DebertaV2Model

        hidden = config.hidden_size
        self.pretrained_model = DebertaV2Model(config)
        # Same layer order as llm-blender's head, so the Linear layers are keys head_layer.1 and head_layer.4.
        self.head_layer = nn.Sequential(
            nn.Dropout(drop_out),
            nn.Linear(2 * hidden, hidden),
            nn.Tanh(),
            nn.Dropout(drop_out),
            nn.Linear(hidden, n_tasks),
        )

    def forward(self, input_ids, attention_mask, source_pos, first_pos, second_pos):
        """Pair logits [B] for a padded batch; *_pos [B] are the positions of the three prefix tokens."""
        # llm-blender reads hidden_states[-1]; for DebertaV2Model (z_steps = 0) that is last_hidden_state.
        hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        source = hidden[rows, source_pos]
        first = self.head_layer(torch.cat([source, hidden[rows, first_pos]], dim=-1))
        second = self.head_layer(torch.cat([source, hidden[rows, second_pos]], dim=-1))
        return (first - second).mean(dim=-1)


@dataclass(frozen=True)
class _Layout:
    name: str
    backbone: object  # DebertaV2Config
    n_tasks: int
    drop_out: float
    source_max_length: int
    candidate_max_length: int
    config_file: Path
    prefix_ids: dict | None  # from a PairRM-hf config.json; None for llm-blender/PairRM


@dataclass(frozen=True)
class _Item:
    ids: list[int]
    positions: tuple[int, int, int]


class PairRM:
    """A loaded PairRM: `pair_logits` for (source, first, second) triples, `logit_matrices` for K×K."""

    def __init__(
        self,
        module: PairRMModule,
        tokenizer,
        *,
        prefix_ids: dict[str, int],
        source_max_length: int,
        candidate_max_length: int,
        layout: str,
        path: Path,
    ):
        self.module = module
        self.tokenizer = tokenizer
        self.prefix_ids = dict(prefix_ids)
        self.source_max_length = source_max_length
        self.candidate_max_length = candidate_max_length
        self.layout = layout
        self.path = path

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    # -- input ----------------------------------------------------------------------------------------

    def _contents(self, pieces: list[str]) -> dict[str, list[int]]:
        """Token ids of each distinct ``prefix + text`` without [CLS]/[SEP], one tokenizer call for all."""
        unique = list(dict.fromkeys(pieces))
        if not unique:
            return {}
        encoded = self.tokenizer(unique, add_special_tokens=False)["input_ids"]
        return dict(zip(unique, encoded, strict=True))

    def _clean(self, text: str) -> str:
        # llm-blender's CrossCompareCollator replaces the separator's text by a space, so that a literal
        # "[SEP]" in a prompt or response cannot end a segment.
        return text.replace(self.tokenizer.sep_token, " ")

    def _segment(self, content: list[int], max_length: int) -> list[int]:
        # [CLS] + content + [SEP], cut from the right to max_length tokens with [SEP] kept: what the
        # tokenizer's own truncation (truncation=True, max_length=..., side "right") gives.
        return [self.tokenizer.cls_token_id, *content[: max_length - 2], self.tokenizer.sep_token_id]

    def _items(self, sources: list[str], firsts: list[str], seconds: list[str]) -> list[_Item]:
        for name, texts in (("sources", sources), ("firsts", firsts), ("seconds", seconds)):
            if not all(isinstance(t, str) for t in texts):
                raise TypeError(f"pair_logits: {name} must be a list of str")
        if not len(sources) == len(firsts) == len(seconds):
            raise ValueError(
                f"pair_logits: sources, firsts and seconds differ in length "
                f"({len(sources)}, {len(firsts)}, {len(seconds)})"
            )
        src = [SOURCE_PREFIX + self._clean(t) for t in sources]
        one = [CANDIDATE1_PREFIX + self._clean(t) for t in firsts]
        two = [CANDIDATE2_PREFIX + self._clean(t) for t in seconds]
        contents = self._contents(src + one + two)
        total = self.source_max_length + 2 * self.candidate_max_length
        items = []
        for s, a, b in zip(src, one, two, strict=True):
            source = self._segment(contents[s], self.source_max_length)
            budget = (total - len(source)) // 2  # README tokenize_pair; ≥ candidate_max_length
            first = self._segment(contents[a], budget)
            second = self._segment(contents[b], budget)
            positions = (1, len(source) + 1, len(source) + len(first) + 1)
            items.append(_Item(source + first + second, positions))
        return items

    def encode(self, source: str, first: str, second: str) -> tuple[list[int], tuple[int, int, int]]:
        """Input ids of one triple and the positions of its <|source|>, <|candidate1|>, <|candidate2|>."""
        item = self._items([source], [first], [second])[0]
        return item.ids, item.positions

    # -- model ----------------------------------------------------------------------------------------

    def pair_logits(self, sources: list[str], firsts: list[str], seconds: list[str], batch_size: int = 8) -> np.ndarray:
        """PairRM's logit that ``firsts[n]`` beats ``seconds[n]`` as a reply to ``sources[n]``, float64 [N].

        Triples are sorted by length (longest first, so a batch too large for the device fails at once)
        and batched `batch_size` at a time; results come back in input order. Right padding is masked, so
        a triple's logit does not depend on its batch (up to float rounding).
        """
        if int(batch_size) < 1:
            raise ValueError(f"pair_logits: batch_size must be ≥ 1, got {batch_size}")
        items = self._items(list(sources), list(firsts), list(seconds))
        out = np.zeros(len(items), dtype=np.float64)
        order = sorted(range(len(items)), key=lambda i: len(items[i].ids), reverse=True)
        device = self.device
        pad = self.tokenizer.pad_token_id
        self.module.eval()
        with torch.inference_mode():
            for start in range(0, len(order), int(batch_size)):
                chunk = order[start : start + int(batch_size)]
                width = max(len(items[i].ids) for i in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    ids[row, : len(items[i].ids)] = torch.tensor(items[i].ids)
                    mask[row, : len(items[i].ids)] = 1
                pos = torch.tensor([items[i].positions for i in chunk], dtype=torch.long)
                logits = self.module(
                    ids.to(device), mask.to(device), pos[:, 0].to(device), pos[:, 1].to(device), pos[:, 2].to(device)
                )
                out[chunk] = logits.float().cpu().numpy().astype(np.float64)
        return out

    def logit_matrices(self, sources: list[str], candidates: list[list[str]], batch_size: int = 8) -> list[np.ndarray]:
        """For each source, the K×K matrix c[i, j] = pair logit of (candidate i, candidate j).

        All K(K−1) ordered pairs of all sources go through `pair_logits` together. The diagonal is 0 and
        is not computed (llm-blender's full comparison skips i = j too): it cancels in both preference
        modes, since they use only c[i, j] − c[j, i].
        """
        if len(sources) != len(candidates):
            raise ValueError(f"logit_matrices: {len(sources)} sources but {len(candidates)} candidate lists")
        src, one, two, where = [], [], [], []
        for n, (source, cands) in enumerate(zip(sources, candidates, strict=True)):
            for i in range(len(cands)):
                for j in range(len(cands)):
                    if i != j:
                        src.append(source)
                        one.append(cands[i])
                        two.append(cands[j])
                        where.append((n, i, j))
        flat = self.pair_logits(src, one, two, batch_size=batch_size)
        mats = [np.zeros((len(c), len(c)), dtype=np.float64) for c in candidates]
        for (n, i, j), value in zip(where, flat, strict=True):
            mats[n][i, j] = value
        return mats


# -- preference matrices ------------------------------------------------------------------------------


def _antisymmetric_part(logits) -> np.ndarray:
    """d[..., i, j] = c[i, j] − c[j, i], exactly antisymmetric; the diagonal (whatever c[i, i]) is 0."""
    c = np.asarray(logits, dtype=np.float64)
    if c.ndim < 2 or c.shape[-1] != c.shape[-2]:
        raise ValueError(f"logits must have shape [..., K, K], got {c.shape}")
    k = c.shape[-1]
    off = ~np.eye(k, dtype=bool)
    if not np.isfinite(c[..., off]).all():
        raise ValueError("logits must be finite off the diagonal")
    # IEEE subtraction is sign-symmetric (a − b = −(b − a) exactly), so d is exactly antisymmetric.
    return np.where(off, c - np.swapaxes(c, -1, -2), 0.0)


def _complementary_sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) for an exactly antisymmetric x, with P + Pᵀ = 1 and diag P = ½ holding exactly.

    σ(|x|) ∈ [½, 1] is computed for each pair; the other entry is 1 − σ(|x|), which is exact in floating
    point for a number in [½, 1] (Sterbenz), so the two entries sum to exactly 1.
    """
    larger = 1.0 / (1.0 + np.exp(-np.abs(x)))
    return np.where(x >= 0, larger, 1.0 - larger)


def sppo_preferences(logits) -> np.ndarray:
    """SPPO's PairRM preference matrix from a K×K (or [..., K, K]) matrix of pair logits.

    The reference recipe (uclaml/SPPO scripts/rank.py + scripts/compute_prob.py): llm-blender's
    ``Blender.rank(..., return_scores=True)`` fills c[i, j] for i ≠ j (the diagonal is skipped, left 0)
    and scores each candidate by ``s_i = mean_j (c[i, j] − c[j, i])`` over all K columns, the zero
    diagonal term included (``get_scores_from_cmps``, policy "max_logits"); then
    ``P[i, j] = 1 / (1 + exp(s_j − s_i)) = σ(s_i − s_j)``. The value of c[i, i] does not matter.
    """
    d = _antisymmetric_part(logits)
    scores = d.mean(axis=-1)
    return _complementary_sigmoid(scores[..., :, None] - scores[..., None, :])


def direct_preferences(logits) -> np.ndarray:
    """P(i ≻ j) = σ((c[i, j] − c[j, i]) / 2): PairRM's own log-odds for the pair, averaged over both orders
    to cancel its position bias. Uses no other candidate. The value of c[i, i] does not matter."""
    return _complementary_sigmoid(_antisymmetric_part(logits) / 2.0)


def preference_matrix(logits, mode: str = "sppo") -> np.ndarray:
    """`sppo_preferences` or `direct_preferences`, by name."""
    if mode == "sppo":
        return sppo_preferences(logits)
    if mode == "direct":
        return direct_preferences(logits)
    raise UserError(f"unknown PairRM preference mode {mode!r}; expected one of {', '.join(MODES)}")


# -- loading ------------------------------------------------------------------------------------------


def resolve_checkpoint(name: str | os.PathLike) -> Path:
    """A local PairRM directory, or the snapshot directory of a hub id (org/name) via huggingface_hub."""
    text = str(name)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"PairRM checkpoint {text!r} is a file; expected a checkpoint directory or a hub id")
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and " " not in text:
        from huggingface_hub import snapshot_download

        try:
            # Honours HF_HUB_OFFLINE (then only the local cache is used).
            return Path(snapshot_download(text, allow_patterns=_HUB_FILES))
        except Exception as exc:  # any hub failure (offline, missing repo, network) is the user's
            raise UserError(
                f"PairRM checkpoint {text!r} is not a local directory and could not be resolved as a "
                f"Hugging Face hub id (nor found in the local cache): {exc}"
            ) from exc
    raise UserError(f"PairRM checkpoint directory {text!r} does not exist")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _int_field(cfg: dict, key: str, default: int, path: Path, minimum: int) -> int:
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{path}: {key} must be an integer ≥ {minimum}, got {value!r}")
    return value


def _backbone_config(model_name, ranker_path: Path):
    """The DeBERTa-v2 config of llm-blender/PairRM's backbone, named by its ranker config's model_name."""
    from transformers import AutoConfig, DebertaV2Config

    if not isinstance(model_name, str) or not model_name:
        raise UserError(
            f"{ranker_path}: model_name (the DeBERTa backbone, {DEBERTA_V3_LARGE_NAME} for PairRM) is missing"
        )
    if model_name == DEBERTA_V3_LARGE_NAME:
        return DebertaV2Config(**DEBERTA_V3_LARGE)
    local = Path(model_name).expanduser()
    try:
        config = AutoConfig.from_pretrained(str(local) if local.is_dir() else model_name)
    except Exception as exc:  # a missing/unreachable backbone is the user's to fix
        raise UserError(
            f"{ranker_path}: model_name {model_name!r} is neither {DEBERTA_V3_LARGE_NAME}, a local "
            f"model directory, nor a hub id in the local cache: {exc}"
        ) from exc
    if getattr(config, "model_type", None) != "deberta-v2":
        raise UserError(
            f"{ranker_path}: model_name {model_name!r} is a {config.model_type!r} model; PairRM's "
            f"backbone is DeBERTa-v2/v3"
        )
    return config


def _read_layout(directory: Path) -> _Layout:
    from transformers import DebertaV2Config

    config_path = directory / "config.json"
    ranker_path = directory / "ranker_config.json"
    config = _read_json(config_path) if config_path.is_file() else None
    if config is not None and "ranker_type" not in config:
        if config.get("model_type") != "deberta-v2":
            raise UserError(
                f"{config_path}: not a PairRM config: expected llm-blender's ranker config (ranker_type "
                f"'pairranker', as in llm-blender/PairRM) or a DeBERTa-v2 config with source_prefix_id, "
                f"cand1_prefix_id and cand2_prefix_id (as in llm-blender/PairRM-hf); got model_type "
                f"{config.get('model_type')!r}"
            )
        missing = [k for k in ("source_prefix_id", "cand1_prefix_id", "cand2_prefix_id") if k not in config]
        if missing:
            raise UserError(
                f"{config_path}: a DeBERTa-v2 config without {', '.join(missing)}: not a PairRM-hf "
                f"checkpoint (its DebertaV2PairRM config carries the ids of PairRM's prefix tokens)"
            )
        ids = {}
        for key, token in (
            ("source_prefix_id", SOURCE_PREFIX),
            ("cand1_prefix_id", CANDIDATE1_PREFIX),
            ("cand2_prefix_id", CANDIDATE2_PREFIX),
        ):
            ids[token] = _int_field(config, key, 0, config_path, 0)
        try:
            backbone = DebertaV2Config.from_dict(config)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{config_path}: not a valid DeBERTa-v2 config ({exc})") from exc
        drop = config.get("drop_out", 0.05)
        return _Layout(
            "PairRM-hf",
            backbone,
            _int_field(config, "n_tasks", 1, config_path, 1),
            float(drop) if isinstance(drop, int | float) else 0.05,
            SOURCE_MAX_LENGTH,
            CANDIDATE_MAX_LENGTH,
            config_path,
            ids,
        )
    ranker, path = (config, config_path) if config is not None else (None, ranker_path)
    if ranker is None:
        if not ranker_path.is_file():
            raise UserError(
                f"{directory}: not a PairRM checkpoint: no config.json (llm-blender/PairRM and PairRM-hf both "
                f"have one) and no ranker_config.json"
            )
        ranker = _read_json(ranker_path)
    if ranker.get("ranker_type") != "pairranker":
        raise UserError(f"{path}: ranker_type is {ranker.get('ranker_type')!r}; PairRM is llm-blender's 'pairranker'")
    if not str(ranker.get("model_type") or "deberta").startswith("deberta"):
        raise UserError(f"{path}: model_type is {ranker.get('model_type')!r}; PairRM's backbone is DeBERTa")
    drop = ranker.get("drop_out", 0.05)
    return _Layout(
        "PairRM",
        _backbone_config(ranker.get("model_name"), path),
        _int_field(ranker, "n_tasks", 1, path, 1),
        float(drop) if isinstance(drop, int | float) else 0.05,
        _int_field(ranker, "source_maxlength", SOURCE_MAX_LENGTH, path, 3),
        _int_field(ranker, "candidate_maxlength", CANDIDATE_MAX_LENGTH, path, 3),
        path,
        None,
    )


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / WEIGHTS_FILE
    if not path.is_file():
        other = [n for n in ("pytorch_model.bin", "model.safetensors.index.json") if (directory / n).exists()]
        found = f"; found {', '.join(other)}, which sparring does not read" if other else ""
        raise UserError(
            f"{directory}: no {WEIGHTS_FILE} (both published PairRM checkpoints keep their weights there){found}"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path}: cannot read safetensors ({exc})") from exc


def _load_module(layout: _Layout, state: dict[str, torch.Tensor], path: Path) -> PairRMModule:
    from accelerate import init_empty_weights

    for prefix, what in ((BACKBONE_PREFIX, "the DeBERTa encoder"), (HEAD_PREFIX, "PairRM's head")):
        if not any(k.startswith(prefix) for k in state):
            raise UserError(f"{path}: no '{prefix}*' tensors ({what}); not a PairRM checkpoint")
    # Older transformers saved this constant buffer (arange); the current DebertaV2Model does not keep it.
    state = {k: v for k, v in state.items() if k != BACKBONE_PREFIX + "embeddings.position_ids"}
    unexpected = sorted(k for k in state if not k.startswith((BACKBONE_PREFIX, HEAD_PREFIX)))
    if unexpected:
        raise UserError(
            f"{path}: unexpected tensors {', '.join(unexpected[:5])}"
            f"{' …' if len(unexpected) > 5 else ''}; a PairRM checkpoint holds only "
            f"'{BACKBONE_PREFIX}*' and '{HEAD_PREFIX}*'"
        )
    embedding = state.get(BACKBONE_PREFIX + "embeddings.word_embeddings.weight")
    if embedding is None:
        raise UserError(f"{path}: no '{BACKBONE_PREFIX}embeddings.word_embeddings.weight'")
    if layout.prefix_ids is None:
        # llm-blender resized deberta-v3-large's embeddings to its tokenizer (128005 rows for PairRM).
        layout.backbone.vocab_size = int(embedding.shape[0])
    # Parameters on the meta device (buffers real): the checkpoint's tensors are assigned, not copied, so
    # the model is never randomly initialised.
    with init_empty_weights(include_buffers=False):
        module = PairRMModule(layout.backbone, layout.n_tasks, layout.drop_out)
    try:
        result = module.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise UserError(
            f"{path}: tensors do not fit the model described by {layout.config_file.name} ({str(exc).strip()[:1000]})"
        ) from exc
    if result.missing_keys:
        missing = result.missing_keys
        raise UserError(f"{path}: missing tensors {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    if result.unexpected_keys:
        extra = result.unexpected_keys
        raise UserError(
            f"{path}: tensors the model described by {layout.config_file.name} does not have: "
            f"{', '.join(extra[:5])}{' …' if len(extra) > 5 else ''}"
        )
    return module


def _load_tokenizer(directory: Path, layout: _Layout, vocab_rows: int):
    from transformers import PreTrainedTokenizerFast

    path = directory / "tokenizer.json"
    if not path.is_file():
        raise UserError(
            f"{directory}: no tokenizer.json (both published PairRM checkpoints ship DeBERTa-v3's "
            f"tokenizer with PairRM's added tokens there; sparring reads it as is)"
        )
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(str(directory))
    except Exception as exc:  # a corrupt tokenizer file is the user's to fix
        raise UserError(f"{path}: cannot load the tokenizer ({exc})") from exc
    for attr, token in (("cls_token", "[CLS]"), ("sep_token", "[SEP]"), ("pad_token", "[PAD]")):
        if getattr(tok, attr) is None:
            if tok.convert_tokens_to_ids(token) in (None, tok.unk_token_id):
                raise UserError(f"{directory}: the tokenizer has no {attr} (DeBERTa's {token})")
            setattr(tok, attr, token)  # tokenizer_config.json lost the name; DeBERTa's token is in the vocab
    tok.truncation_side = "right"
    ids = {}
    for token in (SOURCE_PREFIX, CANDIDATE1_PREFIX, CANDIDATE2_PREFIX):
        tid = tok.convert_tokens_to_ids(token)
        if tid is None or tid == tok.unk_token_id:
            raise UserError(f"{path}: PairRM's token {token} is not in the vocabulary")
        if not 0 <= tid < vocab_rows:
            raise UserError(f"{path}: token {token} has id {tid}, outside the model's {vocab_rows} embeddings")
        probe = tok(token + " probe")["input_ids"]
        bare = tok(token + " probe", add_special_tokens=False)["input_ids"]
        if probe != [tok.cls_token_id, *bare, tok.sep_token_id] or bare[:1] != [tid]:
            raise UserError(
                f"{path}: the tokenizer does not encode {token}text as [CLS] {token} … [SEP] (got ids {probe[:4]}…)"
            )
        ids[token] = tid
    if layout.prefix_ids is not None and layout.prefix_ids != ids:
        raise UserError(
            f"{layout.config_file}: prefix token ids {layout.prefix_ids} differ from the tokenizer's {ids} in {path}"
        )
    return tok, ids


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise UserError(f"PairRM dtype {dtype!r} not supported; use one of {', '.join(_DTYPES)}")


def load_pairrm(
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype="fp32",
    *,
    source_max_length: int | None = None,
    candidate_max_length: int | None = None,
) -> PairRM:
    """Load llm-blender/PairRM or llm-blender/PairRM-hf (a directory, or a hub id in the local cache).

    `dtype`: fp32 (the README's published logits) or bf16; fp16 is accepted too (llm-blender runs PairRM
    in fp16 on CUDA, its RankerConfig default). `source_max_length` / `candidate_max_length` override
    1224 / 412 (PairRM's ranker config values; PairRM-hf's config has none, its README uses the same).
    """
    directory = resolve_checkpoint(checkpoint)
    torch_dtype = _as_dtype(dtype)
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"PairRM device {device!r} is not a torch device ({exc})") from exc
    layout = _read_layout(directory)
    state = _read_weights(directory)
    module = _load_module(layout, state, directory / WEIGHTS_FILE)
    vocab_rows = module.pretrained_model.embeddings.word_embeddings.weight.shape[0]
    tok, ids = _load_tokenizer(directory, layout, vocab_rows)
    src_max = layout.source_max_length if source_max_length is None else int(source_max_length)
    cand_max = layout.candidate_max_length if candidate_max_length is None else int(candidate_max_length)
    if src_max < 3 or cand_max < 3:
        raise UserError(f"PairRM source/candidate max lengths must be ≥ 3 tokens, got {src_max}/{cand_max}")
    try:
        module = module.to(device=torch_device, dtype=torch_dtype).eval()
    except (RuntimeError, AssertionError) as exc:  # e.g. "Torch not compiled with CUDA enabled"
        raise UserError(f"cannot put PairRM on device {device!r}: {exc}") from exc
    return PairRM(
        module,
        tok,
        prefix_ids=ids,
        source_max_length=src_max,
        candidate_max_length=cand_max,
        layout=layout.name,
        path=directory,
    )
