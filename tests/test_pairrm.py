"""PairRM on transformers' DeBERTa-v2 (sparring.judges.pairrm_model), on tiny random-weight checkpoints.

The tiny checkpoints keep the published layouts of llm-blender/PairRM and llm-blender/PairRM-hf:
the file names (config.json, ranker_config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
special_tokens_map.json, added_tokens.json), the tensor names (``pretrained_model.*`` = a DebertaV2Model,
``head_layer.1.*`` / ``head_layer.4.*`` = the head's two Linear layers), the config fields (PairRM-hf: a
DeBERTa-v2 config with ``architectures``, ``source_prefix_id``, ``cand1_prefix_id``, ``cand2_prefix_id``,
``cand_prefix_id``, ``n_tasks``, ``drop_out``; PairRM: llm-blender's RankerConfig fields), DeBERTa-v3's
architecture options (relative attention with log position buckets, p2c|c2p, shared keys, no absolute
positions, no token types) and the tokenizer's layout: a Unigram model with [PAD]/[CLS]/[SEP]/[UNK] at
0–3, [MASK] right after the vocabulary (128000 in PairRM) and then <|source|>, <|candidate1|>,
<|candidate2|>, <|candidate|> (128001–128004 in PairRM), with the normalizer / Metaspace / [CLS] $A [SEP]
pipeline transformers 4.x wrote into PairRM's tokenizer.json. What differs: sizes (hidden 32, 2 layers,
a ~100-piece vocabulary, 8 position buckets), no spm.model / training_args.bin, no sentencepiece charsmap
in the normalizer, and in the PairRM layout `model_name` points at a local directory holding the tiny
backbone's config instead of naming microsoft/deberta-v3-large.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from sparring.errors import UserError
from sparring.judges import pairrm_check
from sparring.judges.pairrm_model import (
    CANDIDATE1_PREFIX,
    CANDIDATE2_PREFIX,
    CANDIDATE_PREFIX,
    DEBERTA_V3_LARGE,
    SOURCE_PREFIX,
    PairRMModule,
    direct_preferences,
    load_pairrm,
    preference_matrix,
    sppo_preferences,
)

WORDS = [
    "▁hello",
    "▁hi",
    "▁I",
    "▁love",
    "▁you",
    "▁hate",
    "▁too",
    "▁get",
    "▁out",
    "▁bye",
    "▁off",
    "▁thanks",
    "▁am",
    "▁fine",
    "▁how",
    "▁are",
    "▁the",
    "▁cat",
    "▁sat",
    "▁on",
    "▁mat",
    "▁good",
    "▁guy",
    "▁",
    "!",
    ",",
    "?",
    ".",
    "*",
    "'",
]
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

SOURCES = [
    "hello, how are you!",
    "I love you!",
    "the cat sat on the mat. " * 6,
    "Say hi.",
    "hello!",
    "Tell me about the cat, the mat, and you. " * 3,
    "bye",
]
FIRSTS = ["hi! I am fine, thanks!", "I hate you!", "the cat sat.", "hi " * 30, "hi!", "good guy " * 12, "bye bye"]
SECONDS = [
    "get out!",
    "I love you, too!",
    "the mat! " * 9,
    "hello there",
    "f**k off!",
    "I am fine.",
    "see you [SEP] soon",
]


def make_tokenizer():
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    vocab = [(t, 0.0) for t in ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]]
    vocab += [(w, -2.0) for w in WORDS] + [(c, -5.0) for c in LETTERS]
    vocab += [("▁" + c, -5.5) for c in LETTERS if "▁" + c not in WORDS]
    tk = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    # transformers 4.x's DebertaV2Converter pipeline, less the sentencepiece charsmap (Precompiled).
    tk.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        bos_token="[CLS]",
        eos_token="[SEP]",
    )
    # Added in llm-blender's order (CrossCompareCollator): ids len(vocab)+1 … +4, after [MASK].
    tok.add_tokens([SOURCE_PREFIX, CANDIDATE1_PREFIX, CANDIDATE2_PREFIX, CANDIDATE_PREFIX])
    return tok


def tiny_backbone_config(vocab_size: int):
    from transformers import DebertaV2Config

    return DebertaV2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        relative_attention=True,
        max_relative_positions=-1,
        position_buckets=8,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
        layer_norm_eps=1e-7,
        hidden_act="gelu",
        pad_token_id=0,
        # With the usual 0.02 the hidden state at a prefix token is little more than that token's own
        # embedding, so every triple gets nearly the same logit; larger weights make it depend on the text.
        initializer_range=0.5,
    )


def tiny_state(config, seed: int) -> dict[str, torch.Tensor]:
    from transformers import DebertaV2Model

    torch.manual_seed(seed)
    backbone = DebertaV2Model(config)
    hidden = config.hidden_size
    head = torch.nn.Sequential(
        torch.nn.Dropout(0.05),
        torch.nn.Linear(2 * hidden, hidden),
        torch.nn.Tanh(),
        torch.nn.Dropout(0.05),
        torch.nn.Linear(hidden, 1),
    )
    state = {"pretrained_model." + k: v for k, v in backbone.state_dict().items()}
    state.update({"head_layer." + k: v for k, v in head.state_dict().items()})
    return {k: v.contiguous() for k, v in state.items()}


def write_tokenizer(tok, directory):
    tok.save_pretrained(directory)
    # As in the published checkpoints (saved by transformers 4.x): class name and the side files.
    cfg_path = directory / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "DebertaV2Tokenizer"
    cfg_path.write_text(json.dumps(cfg))
    added = {
        t: tok.convert_tokens_to_ids(t)
        for t in ["[MASK]", SOURCE_PREFIX, CANDIDATE1_PREFIX, CANDIDATE2_PREFIX, CANDIDATE_PREFIX]
    }
    (directory / "added_tokens.json").write_text(json.dumps(added))
    (directory / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "[CLS]",
                "cls_token": "[CLS]",
                "eos_token": "[SEP]",
                "mask_token": "[MASK]",
                "pad_token": "[PAD]",
                "sep_token": "[SEP]",
                "unk_token": "[UNK]",
            }
        )
    )


def write_hf_layout(directory, tok, config, state):
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    cfg = config.to_dict()
    cfg.update(
        {
            "architectures": ["DebertaV2PairRM"],
            "n_tasks": 1,
            "drop_out": 0.05,
            "source_prefix_id": tok.convert_tokens_to_ids(SOURCE_PREFIX),
            "cand1_prefix_id": tok.convert_tokens_to_ids(CANDIDATE1_PREFIX),
            "cand2_prefix_id": tok.convert_tokens_to_ids(CANDIDATE2_PREFIX),
            "cand_prefix_id": tok.convert_tokens_to_ids(CANDIDATE_PREFIX),
        }
    )
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(tok, directory)
    return directory


def write_blender_layout(directory, tok, backbone_dir, state, source_max: int, candidate_max: int):
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    ranker = {
        "ranker_type": "pairranker",
        "model_type": "deberta",
        "model_name": str(backbone_dir),
        "cache_dir": "./hf_models/deberta-v3-large/",
        "load_checkpoint": None,
        "source_maxlength": source_max,
        "candidate_maxlength": candidate_max,
        "n_tasks": 1,
        "num_pos": 5,
        "num_neg": 5,
        "sub_sampling_mode": "all_pair",
        "sub_sampling_ratio": 0.4,
        "loss_type": "instructgpt",
        "reduce_type": "linear",
        "inference_mode": "bubble",
        "drop_out": 0.05,
        "fp16": True,
    }
    (directory / "config.json").write_text(json.dumps(ranker, indent=2))
    (directory / "ranker_config.json").write_text(json.dumps(ranker, indent=2))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(tok, directory)
    return directory


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairrm")
    tok = make_tokenizer()
    config = tiny_backbone_config(len(tok))
    backbone_dir = root / "tiny-deberta"
    config.save_pretrained(backbone_dir)
    hf = write_hf_layout(root / "PairRM-hf", tok, config, tiny_state(config, seed=0))
    blender = write_blender_layout(
        root / "PairRM", tok, backbone_dir, tiny_state(config, seed=1), source_max=24, candidate_max=10
    )
    return {"hf": hf, "blender": blender, "config": config, "root": root}


def reference_logits(directory, config, sources, firsts, seconds, source_max, candidate_max):
    """PairRM by hand, following the PairRM-hf README's tokenize_pair and DebertaV2PairRM.forward: raw
    `tokenizers` encoding with truncation, one unpadded sequence at a time, prefix positions found by id,
    the head's matrices applied by hand."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import DebertaV2Model

    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))

    def encode(text, max_length):
        raw.enable_truncation(max_length=max_length)
        return raw.encode(text.replace("[SEP]", " ")).ids

    state = load_file(str(directory / "model.safetensors"))
    encoder = DebertaV2Model(config)
    encoder.load_state_dict(
        {k.removeprefix("pretrained_model."): v for k, v in state.items() if k.startswith("pretrained_model.")}
    )
    encoder.eval()
    w1, b1 = state["head_layer.1.weight"].double(), state["head_layer.1.bias"].double()
    w2, b2 = state["head_layer.4.weight"].double(), state["head_layer.4.bias"].double()

    def head(x):
        return torch.tanh(x @ w1.T + b1) @ w2.T + b2

    sid, aid, bid = (raw.token_to_id(t) for t in (SOURCE_PREFIX, CANDIDATE1_PREFIX, CANDIDATE2_PREFIX))
    ids_out, logits = [], []
    for s, a, b in zip(sources, firsts, seconds, strict=True):
        src = encode(SOURCE_PREFIX + s, source_max)
        budget = (source_max + 2 * candidate_max - len(src)) // 2
        ids = src + encode(CANDIDATE1_PREFIX + a, budget) + encode(CANDIDATE2_PREFIX + b, budget)
        with torch.no_grad():
            h = encoder(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].double()
        x = torch.tensor(ids)
        hs, ha, hb = (h[torch.where(x == t)[0][0]] for t in (sid, aid, bid))
        logits.append(float((head(torch.cat([hs, ha])) - head(torch.cat([hs, hb]))).mean()))
        ids_out.append(ids)
    return ids_out, np.array(logits)


# -- loading and logits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout, source_max, candidate_max", [("hf", 1224, 412), ("blender", 24, 10)])
def test_pair_logits_match_hand_computation(ckpts, layout, source_max, candidate_max):
    model = load_pairrm(ckpts[layout], device="cpu", dtype="fp32")
    assert (model.source_max_length, model.candidate_max_length) == (source_max, candidate_max)
    ref_ids, ref = reference_logits(ckpts[layout], ckpts["config"], SOURCES, FIRSTS, SECONDS, source_max, candidate_max)
    for n in range(len(SOURCES)):
        ids, positions = model.encode(SOURCES[n], FIRSTS[n], SECONDS[n])
        assert ids == ref_ids[n]
        assert [ids[p] for p in positions] == [
            model.prefix_ids[t] for t in (SOURCE_PREFIX, CANDIDATE1_PREFIX, CANDIDATE2_PREFIX)
        ]
    got = model.pair_logits(SOURCES, FIRSTS, SECONDS, batch_size=3)
    assert got.dtype == np.float64 and got.shape == (len(SOURCES),)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    assert ref.std() > 0.1  # the logits depend on the texts: the comparison can tell triples apart


def test_truncation_and_candidate_budget(ckpts):
    model = load_pairrm(ckpts["blender"])
    long = "the cat sat on the mat. " * 20
    ids, (_, a, b) = model.encode(long, long, "hi")
    cls, sep = model.tokenizer.cls_token_id, model.tokenizer.sep_token_id
    assert a == 24 + 1  # source cut to 24 tokens: [CLS] <|source|> … [SEP]
    assert ids[0] == cls and ids[23] == sep and ids[24] == cls
    budget = (24 + 2 * 10 - 24) // 2  # = 10: a full source leaves candidates the 412-like floor
    assert b == 24 + budget + 1 and ids[24 + budget - 1] == sep
    ids, (_, a, b) = model.encode("hi", long, long)
    short_source = a - 1
    budget = (24 + 2 * 10 - short_source) // 2  # a short source lends its room to both candidates
    assert budget > 10 and b - a == budget and len(ids) == short_source + 2 * budget
    # Truncation keeps the start (right side cut), as the tokenizer's default truncation does.
    full = model.tokenizer(CANDIDATE1_PREFIX + long, add_special_tokens=False)["input_ids"]
    assert ids[a : a + budget - 2] == full[: budget - 2]


def test_literal_sep_in_text_is_replaced(ckpts):
    model = load_pairrm(ckpts["hf"])
    sep = model.tokenizer.sep_token_id
    ids, _ = model.encode("a [SEP] b", "c[SEP]d", "[SEP]")
    assert ids.count(sep) == 3  # only the three segment ends
    assert ids == model.encode("a   b", "c d", " ")[0]


def test_batching_and_length_sorting_do_not_change_results(ckpts):
    model = load_pairrm(ckpts["hf"])
    widths = []
    hook = model.module.pretrained_model.register_forward_pre_hook(
        lambda mod, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        one = model.pair_logits(SOURCES, FIRSTS, SECONDS, batch_size=1)
        widths_one = list(widths)
        widths.clear()
        three = model.pair_logits(SOURCES, FIRSTS, SECONDS, batch_size=3)
        widths_three = list(widths)
        widths.clear()
        everything = model.pair_logits(SOURCES, FIRSTS, SECONDS, batch_size=len(SOURCES))
    finally:
        hook.remove()
    np.testing.assert_allclose(three, one, atol=1e-5, rtol=0)
    np.testing.assert_allclose(everything, one, atol=1e-5, rtol=0)
    # Longest first: batch widths never grow, and batches of one are exactly the sorted lengths.
    lengths = sorted((len(model.encode(*t)[0]) for t in zip(SOURCES, FIRSTS, SECONDS, strict=True)), reverse=True)
    assert widths_one == lengths
    assert widths_three == sorted(widths_three, reverse=True) and len(widths_three) == 3
    # Results follow the input order, whatever order the batches ran in.
    perm = [3, 0, 6, 2, 5, 1, 4]
    shuffled = model.pair_logits(
        [SOURCES[i] for i in perm], [FIRSTS[i] for i in perm], [SECONDS[i] for i in perm], batch_size=2
    )
    np.testing.assert_allclose(shuffled, one[perm], atol=1e-5, rtol=0)
    assert model.pair_logits([], [], []).shape == (0,)


def test_swapping_candidates_uses_the_other_prefix(ckpts):
    model = load_pairrm(ckpts["hf"])
    ab = model.pair_logits(SOURCES, FIRSTS, SECONDS)
    ba = model.pair_logits(SOURCES, SECONDS, FIRSTS)
    _, ref_ba = reference_logits(ckpts["hf"], ckpts["config"], SOURCES, SECONDS, FIRSTS, 1224, 412)
    np.testing.assert_allclose(ba, ref_ba, atol=1e-5, rtol=0)
    assert not np.allclose(ab, -ba, atol=1e-3)  # random weights: position bias, so c_ji is not −c_ij


def test_logit_matrices(ckpts):
    model = load_pairrm(ckpts["hf"])
    cands = [["hi!", "get out!", "I am fine, thanks!"], ["I love you too!", "bye"]]
    mats = model.logit_matrices(["hello, how are you!", "I love you!"], cands, batch_size=4)
    assert [m.shape for m in mats] == [(3, 3), (2, 2)]
    for n, source in enumerate(["hello, how are you!", "I love you!"]):
        k = len(cands[n])
        assert np.all(np.diag(mats[n]) == 0.0)
        pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
        direct = model.pair_logits(
            [source] * len(pairs), [cands[n][i] for i, _ in pairs], [cands[n][j] for _, j in pairs], batch_size=1
        )
        np.testing.assert_allclose([mats[n][i, j] for i, j in pairs], direct, atol=1e-5, rtol=0)


def test_bf16_load(ckpts):
    fp32 = load_pairrm(ckpts["hf"], dtype="fp32").pair_logits(SOURCES, FIRSTS, SECONDS)
    model = load_pairrm(ckpts["hf"], dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.device == torch.device("cpu")
    got = model.pair_logits(SOURCES, FIRSTS, SECONDS)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, fp32, atol=0.1, rtol=0)  # bf16 keeps 8 mantissa bits


def test_length_overrides(ckpts):
    model = load_pairrm(ckpts["hf"], source_max_length=20, candidate_max_length=8)
    ref_ids, ref = reference_logits(ckpts["hf"], ckpts["config"], SOURCES, FIRSTS, SECONDS, 20, 8)
    assert model.encode(SOURCES[2], FIRSTS[2], SECONDS[2])[0] == ref_ids[2]
    np.testing.assert_allclose(model.pair_logits(SOURCES, FIRSTS, SECONDS), ref, atol=1e-5, rtol=0)


def test_hub_id_resolves_through_huggingface_hub(ckpts, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(ckpts["hf"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_pairrm("llm-blender/PairRM-hf")
    assert model.path == ckpts["hf"] and calls[0][0] == "llm-blender/PairRM-hf"
    assert "model.safetensors" in calls[0][1]["allow_patterns"]

    def offline(repo_id, **kwargs):
        raise OSError("offline and not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError, match="could not be resolved"):
        load_pairrm("llm-blender/PairRM")


def test_builtin_deberta_v3_large_matches_published_size():
    """The built-in backbone (used for llm-blender/PairRM, whose config only names
    microsoft/deberta-v3-large) + head has as many fp32 parameters as the published 1.74 GB file holds."""
    from transformers import DebertaV2Config

    config = DebertaV2Config(**DEBERTA_V3_LARGE)
    config.vocab_size = 128005  # PairRM-hf config.json; 128000 + [MASK] + 4 added tokens
    with torch.device("meta"):
        module = PairRMModule(config)
    n = sum(p.numel() for p in module.parameters())
    assert 1.735e9 <= 4 * n < 1.745e9


# -- preference matrices --------------------------------------------------------------------------------


def sigma(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_modes_on_hand_computed_3x3():
    # The diagonal holds junk on purpose: it must not matter.
    c = np.array([[9.0, 2.0, 0.0], [0.0, 7.0, 1.0], [2.0, 1.0, -3.0]])
    # c − cᵀ: (0,1) → 2, (0,2) → −2, (1,2) → 0; row means over K = 3: s = (0, −2/3, 2/3).
    expected_sppo = np.array(
        [[0.5, sigma(2 / 3), sigma(-2 / 3)], [sigma(-2 / 3), 0.5, sigma(-4 / 3)], [sigma(2 / 3), sigma(4 / 3), 0.5]]
    )
    expected_direct = np.array([[0.5, sigma(1.0), sigma(-1.0)], [sigma(-1.0), 0.5, 0.5], [sigma(1.0), 0.5, 0.5]])
    np.testing.assert_allclose(sppo_preferences(c), expected_sppo, atol=1e-15, rtol=0)
    np.testing.assert_allclose(direct_preferences(c), expected_direct, atol=1e-15, rtol=0)
    np.testing.assert_allclose(preference_matrix(c, "sppo"), expected_sppo, atol=1e-15, rtol=0)
    np.testing.assert_allclose(preference_matrix(c, "direct"), expected_direct, atol=1e-15, rtol=0)
    junk_diagonal = c.copy()
    np.fill_diagonal(junk_diagonal, [np.nan, 1e30, -5.0])
    assert np.array_equal(sppo_preferences(junk_diagonal), sppo_preferences(c))
    assert np.array_equal(direct_preferences(junk_diagonal), direct_preferences(c))


def test_two_candidates():
    # K = 2: SPPO's scores are ±(c01 − c10)/2, so P01 = σ(c01 − c10); direct mode halves the log-odds.
    c = np.array([[0.0, 1.5], [-0.5, 0.0]])
    assert sppo_preferences(c)[0, 1] == pytest.approx(sigma(2.0), abs=1e-15)
    assert direct_preferences(c)[0, 1] == pytest.approx(sigma(1.0), abs=1e-15)


@pytest.mark.parametrize("mode", ["sppo", "direct"])
def test_preferences_are_exactly_complementary(mode):
    rng = np.random.default_rng(0)
    logits = np.concatenate(
        [rng.normal(size=(20, 5, 5)), 40.0 * rng.normal(size=(5, 5, 5)), rng.normal(size=(3, 5, 5)) * 1e-12]
    )
    p = preference_matrix(logits, mode)
    assert p.shape == logits.shape
    assert np.array_equal(p + np.swapaxes(p, -1, -2), np.ones_like(p))
    assert np.all(np.diagonal(p, axis1=-2, axis2=-1) == 0.5)
    assert np.all((p >= 0) & (p <= 1))
    for n in range(logits.shape[0]):  # batched = one at a time
        assert np.array_equal(p[n], preference_matrix(logits[n], mode))


def test_preference_input_errors():
    with pytest.raises(UserError, match="unknown PairRM preference mode"):
        preference_matrix(np.zeros((2, 2)), "mean")
    with pytest.raises(ValueError, match="shape"):
        sppo_preferences(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        direct_preferences(np.array([[0.0, np.inf], [0.0, 0.0]]))


# -- bad checkpoints ----------------------------------------------------------------------------------------


def copy_ckpt(ckpts, layout, tmp_path):
    return shutil.copytree(ckpts[layout], tmp_path / layout)


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_missing_directory_and_files(ckpts, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_pairrm(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_pairrm(empty)
    d = copy_ckpt(ckpts, "hf", tmp_path)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(UserError, match=r"no model\.safetensors.*pytorch_model\.bin"):
        load_pairrm(d)
    d = copy_ckpt(ckpts, "blender", tmp_path)
    (d / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="no tokenizer.json"):
        load_pairrm(d)


def test_bad_configs(ckpts, tmp_path):
    d = copy_ckpt(ckpts, "hf", tmp_path)
    (d / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"config\.json: not valid JSON"):
        load_pairrm(d)
    edit_path = d / "config.json"
    shutil.copy(ckpts["hf"] / "config.json", edit_path)
    edit_json(edit_path, cand2_prefix_id=None)
    with pytest.raises(UserError, match="without cand2_prefix_id"):
        load_pairrm(d)
    shutil.copy(ckpts["hf"] / "config.json", edit_path)
    edit_json(edit_path, model_type="llama")
    with pytest.raises(UserError, match="not a PairRM config"):
        load_pairrm(d)
    shutil.copy(ckpts["hf"] / "config.json", edit_path)
    edit_json(edit_path, source_prefix_id=5)
    with pytest.raises(UserError, match="differ from the tokenizer"):
        load_pairrm(d)
    shutil.copy(ckpts["hf"] / "config.json", edit_path)
    edit_json(edit_path, hidden_size=48, num_attention_heads=4)
    with pytest.raises(UserError, match="do not fit the model described by config.json"):
        load_pairrm(d)

    b = copy_ckpt(ckpts, "blender", tmp_path)
    edit_json(b / "config.json", ranker_type="summareranker")
    with pytest.raises(UserError, match="ranker_type is 'summareranker'"):
        load_pairrm(b)
    (b / "config.json").unlink()  # older PairRM revisions had only ranker_config.json
    assert load_pairrm(b).layout == "PairRM"
    edit_json(b / "ranker_config.json", model_name=str(tmp_path / "no-such-backbone"))
    with pytest.raises(UserError, match="model_name"):
        load_pairrm(b)
    edit_json(b / "ranker_config.json", model_name=str(ckpts["blender"]))
    with pytest.raises(UserError, match="is a 'deberta' model"):  # DeBERTa v1, not v2/v3
        load_pairrm(b)
    edit_json(b / "ranker_config.json", model_name=str(ckpts["root"] / "tiny-deberta"), source_maxlength=2)
    with pytest.raises(UserError, match="source_maxlength must be an integer ≥ 3"):
        load_pairrm(b)


def test_bad_weights_and_tokenizer(ckpts, tmp_path):
    from safetensors.torch import load_file, save_file

    d = copy_ckpt(ckpts, "hf", tmp_path)
    state = load_file(str(ckpts["hf"] / "model.safetensors"))
    save_file({k: v for k, v in state.items() if k != "head_layer.4.weight"}, str(d / "model.safetensors"))
    with pytest.raises(UserError, match=r"missing tensors head_layer\.4\.weight"):
        load_pairrm(d)
    save_file({k.replace("pretrained_model.", "deberta."): v for k, v in state.items()}, str(d / "model.safetensors"))
    with pytest.raises(UserError, match=r"no 'pretrained_model\.\*' tensors"):
        load_pairrm(d)
    save_file({**state, "classifier.weight": torch.zeros(2, 2)}, str(d / "model.safetensors"))
    with pytest.raises(UserError, match=r"unexpected tensors classifier\.weight"):
        load_pairrm(d)
    bad_head = dict(state)
    bad_head["head_layer.1.weight"] = torch.zeros(32, 32)
    save_file(bad_head, str(d / "model.safetensors"))
    with pytest.raises(UserError, match="head_layer.1.weight"):
        load_pairrm(d)
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read safetensors"):
        load_pairrm(d)

    t = copy_ckpt(ckpts, "blender", tmp_path)
    tok_json = json.loads((t / "tokenizer.json").read_text())
    tok_json["added_tokens"] = [a for a in tok_json["added_tokens"] if a["content"] != CANDIDATE2_PREFIX]
    (t / "tokenizer.json").write_text(json.dumps(tok_json))
    (t / "added_tokens.json").unlink()
    cfg = json.loads((t / "tokenizer_config.json").read_text())
    cfg.pop("added_tokens_decoder", None)
    (t / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"<\|candidate2\|> is not in the vocabulary"):
        load_pairrm(t)


def test_bad_dtype_and_device(ckpts):
    with pytest.raises(UserError, match="dtype"):
        load_pairrm(ckpts["hf"], dtype="int8")
    with pytest.raises(UserError, match="not a torch device"):
        load_pairrm(ckpts["hf"], device="gpu0")


# -- the real-weights check script ------------------------------------------------------------------------


def test_pairrm_check_compares_with_published_logits(ckpts, capsys, monkeypatch):
    # Random weights are nowhere near the published logits: the script must say so and fail.
    assert pairrm_check.main([str(ckpts["hf"]), "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "1.900302" in out and "-1.254713" in out
    # Its pass path, with the published numbers replaced by this tiny model's own.
    model = load_pairrm(ckpts["hf"])
    own = model.pair_logits(*pairrm_check.README_EXAMPLE)
    monkeypatch.setattr(pairrm_check, "PUBLISHED_LOGITS", tuple(float(x) for x in own))
    assert pairrm_check.main([str(ckpts["hf"])]) == 0
    assert pairrm_check.main([str(ckpts["root"] / "missing")]) == 2
