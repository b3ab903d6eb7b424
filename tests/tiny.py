"""A tiny causal LM built inside the tests: byte-level tokenizer + 2-layer Llama. No network."""

from __future__ import annotations

from pathlib import Path

from sparring.config import with_values

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<pad>", bos_token="<|im_start|>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tiny_model(path: Path, seed: int = 0, layers: int = 2, hidden: int = 32) -> Path:
    """Write a tiny HF model directory (safetensors) to `path` and return it."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id
    )
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_lively_model(path: Path, seed: int = 4) -> Path:
    """`make_tiny_model` with its matrices redrawn at std 1, saved to `path`: its greedy responses vary
    from prompt to prompt (the initialised tiny model answers every prompt with newlines), so stop
    strings and penalties have work to do."""
    import torch

    from sparring.models import load_model

    path = make_tiny_model(path, seed=seed)
    model = load_model(str(path), "float32")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g))
    model.save_pretrained(path)
    return path


def make_tiny_reward_model(path: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A tiny sequence-classification reward model (one label) with its own tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        num_labels=1,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():  # a readable spread of rewards instead of near-zero logits
        model.score.weight.normal_(0, 1.0)
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_run_config(model: Path, runs_dir: Path, name: str = "t", /, **over) -> dict:
    """A two-iteration SPPO run on a tiny model, small enough for a test: 6 prompts × K 3 per iteration,
    fp32 everywhere, evaluation on 4 held-out prompts; `over`: dotted keys ("train.lr") that change it."""
    cfg = {
        "name": name,
        "seed": 3,
        "iterations": 2,
        "model": str(model),
        "runs_dir": str(runs_dir),
        "method": {"name": "sppo", "beta": 0.1},
        "prompts": {"per_iteration": 6},
        "generation": {"k": 3, "max_new_tokens": 10, "batch_size": 6, "dtype": "float32", "shard_size": 2},
        "train": {"lr": 1e-3, "batch_size": 2, "micro_batch_size": 2, "precision": "fp32"},
        "eval": {"max_new_tokens": 6, "limit": 4, "batch_size": 4},
    }
    return with_values(cfg, over)
