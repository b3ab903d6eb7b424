"""The sampling options (top-k, min-p, repetition penalty, stop strings) against transformers' own
logits processors and stopping criterion, the candidate shortcut against the whole vocabulary, and
the typed SamplingParams / config validation."""

from __future__ import annotations

import pytest
import torch
from tiny import make_tiny_model
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from sparring.config import config_from_dict
from sparring.errors import UserError
from sparring.generation.base import SamplingParams, cut_at_stop
from sparring.generation.hf import chat_prompt_ids, iter_samples, sample_batch, sample_batch_generate
from sparring.generation.sampling import argmax, draw, kept_tokens, penalize, top_m
from sparring.models import load_model, load_tokenizer
from sparring.train import sequence_logps

PROMPTS = ["Write a poem.", "Say hi to the reader, please.", "x"]

# (temperature, top_k, top_p, min_p): each option alone, then together
SETTINGS = [
    (1.0, 5, 1.0, 0.0),
    (0.7, 40, 1.0, 0.0),
    (0.7, 0, 0.9, 0.0),
    (1.3, 0, 0.5, 0.0),
    (1.0, 0, 1.0, 0.1),
    (0.6, 0, 1.0, 0.02),
    (0.8, 50, 0.9, 0.0),
    (0.8, 0, 0.95, 0.05),
    (0.7, 20, 0.8, 0.1),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("sampling") / "m", seed=4)
    return load_model(str(path)).eval(), load_tokenizer(str(path))


@pytest.fixture(scope="module")
def lively(tmp_path_factory):
    """The tiny model with its matrices redrawn at std 1: its greedy responses vary (the initialised
    tiny model answers every prompt with newlines), so penalties and stop strings have work to do."""
    path = make_tiny_model(tmp_path_factory.mktemp("lively") / "m", seed=4)
    model = load_model(str(path)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g))
    return model, load_tokenizer(str(path))


def hf_kept(logits, temperature, top_k, top_p, min_p) -> torch.Tensor:
    procs = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    procs += [TopKLogitsWarper(top_k)] if top_k else []
    procs += [TopPLogitsWarper(top_p)] if top_p < 1.0 else []
    procs += [MinPLogitsWarper(min_p)] if min_p else []
    out = LogitsProcessorList(procs)(torch.zeros((len(logits), 1), dtype=torch.long), logits.clone())
    return torch.isfinite(out)


def model_logits(model, tok) -> torch.Tensor:
    """Next-token logits of the tiny model after a few prompts (a real, peaked distribution)."""
    rows = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = torch.tensor([chat_prompt_ids(tok, p)])
            rows.append(model(input_ids=ids).logits[0, -1] * 20)  # sharpen: the random model is nearly flat
    return torch.stack(rows).float()


def random_logits(n=64, vocab=3000, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 8, n)[:, None]  # from nearly flat to peaked rows
    x = torch.randn(n, vocab, generator=g) * scale
    x[:4, 10:30] = x[:4, :1]  # rows with ties at the top (top-k keeps every tied token)
    return x


@pytest.mark.parametrize("temperature,top_k,top_p,min_p", SETTINGS)
@pytest.mark.parametrize("widths", [(32, 256), (4, 16)], ids=["default", "narrow"])
def test_kept_set_equals_transformers_warpers(tiny, temperature, top_k, top_p, min_p, widths):
    """The candidate shortcut (and its widening, forced often with narrow widths) keeps exactly the
    tokens transformers' warper chain keeps."""
    for logits in (random_logits(), model_logits(*tiny)):
        p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
        got = kept_tokens(logits, p, widths=widths)
        want = hf_kept(logits, temperature, top_k, top_p, min_p)
        assert torch.equal(got.sum(-1), want.sum(-1))
        # which of several tokens tied at the cut is kept is the sort's choice: compare the others
        edge = torch.where(want, logits, float("inf")).amin(-1, keepdim=True)
        tied = logits == edge
        assert torch.equal(got & ~tied, want & ~tied), f"rows differ: {(got != want).any(-1).nonzero().tolist()}"


def test_repetition_penalty_equals_transformers(tiny):
    for logits in (random_logits(8, 500), model_logits(*tiny)):
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, logits.shape[1], (len(logits), 12), generator=g)
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, ids, True)
        for penalty in (1.3, 0.8):
            want = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
            assert torch.equal(penalize(logits, seen, penalty), want)


def test_draws_follow_the_kept_distribution():
    """Inverse-CDF draws over evenly spread uniforms land on each kept token in proportion to its
    probability renormalised over the kept set."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    p = SamplingParams(temperature=0.8, top_k=4, top_p=0.9)
    kept = kept_tokens(logits, p)[0]
    probs = torch.softmax(torch.where(kept, logits[0] / 0.8, float("-inf")), -1)
    n = 20000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    picks = draw(logits.expand(n, -1), p, u)
    freq = torch.bincount(picks, minlength=6).double() / n
    torch.testing.assert_close(freq, probs.double(), atol=2 / n, rtol=0)


def test_block_top_and_argmax_equal_torch():
    x = random_logits(16, 49152, seed=3)
    x[5, 40000] = x[5].max() + 1  # a maximum late in a row
    x[6, [100, 200]] = x[6].max() + 1  # a tie for the maximum: the first one wins
    for m in (1, 32, 256):
        v, i = top_m(x, m)
        tv, ti = x.topk(m, dim=-1)
        assert torch.equal(v, tv) and torch.equal(x.gather(1, i), tv)
    assert torch.equal(argmax(x), x.argmax(-1))
    assert argmax(x)[6] == 100


def test_top_k_one_is_greedy_and_sampled_tokens_stay_in_the_kept_set(tiny):
    model, tok = tiny
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    greedy = sample_batch(model, tok, ids, k=1, seed=0, params=SamplingParams(max_new_tokens=10, greedy=True))
    top1 = sample_batch(model, tok, ids, k=1, seed=0, params=SamplingParams(max_new_tokens=10, top_k=1))
    assert [r[0][0] for r in greedy] == [r[0][0] for r in top1]
    p = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=3, top_p=1.0)
    out = sample_batch(model, tok, ids, k=3, seed=7, params=p)
    with torch.no_grad():
        for prompt, per in zip(ids, out):
            for resp, _, _ in per:
                logits = model(input_ids=torch.tensor([prompt + resp])).logits[0, len(prompt) - 1 : -1]
                assert all(t in logits[i].topk(3).indices.tolist() for i, t in enumerate(resp))


def test_recorded_logp_is_the_raw_models_whatever_the_options(tiny):
    """Penalty, temperature and cuts shape the draws, never the recorded log π (a fresh forward pass)."""
    model, tok = tiny
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    p = SamplingParams(max_new_tokens=12, temperature=0.6, top_k=8, min_p=0.05, repetition_penalty=1.4)
    out = sample_batch(model, tok, ids, k=2, seed=3, params=p)
    prompts = [pr for pr in ids for _ in range(2)]
    with torch.no_grad():
        fresh = sequence_logps(model, prompts, [r[0] for per in out for r in per], tok.pad_token_id).logp
    torch.testing.assert_close(torch.tensor([r[1] for per in out for r in per]), fresh, atol=1e-4, rtol=1e-5)


def test_greedy_repetition_penalty_matches_generate(lively):
    model, tok = lively
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    got = {}
    for penalty in (1.5, 0.7):
        p = SamplingParams(max_new_tokens=16, greedy=True, repetition_penalty=penalty)
        got[penalty] = sample_batch(model, tok, ids, k=1, seed=0, params=p)
        ref = sample_batch_generate(model, tok, ids, k=1, seed=0, params=p)
        assert [r[0][0] for r in got[penalty]] == [r[0][0] for r in ref]
    plain = sample_batch(model, tok, ids, k=1, seed=0, params=SamplingParams(max_new_tokens=16, greedy=True))
    assert [r[0][0] for r in plain] != [r[0][0] for r in got[1.5]]  # the penalty did change the responses


def test_stop_strings_match_generate_and_cut_the_response(lively):
    model, tok = lively
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    free = sample_batch(model, tok, ids, k=1, seed=0, params=SamplingParams(max_new_tokens=20, greedy=True))
    texts = [tok.decode(r[0][0], skip_special_tokens=True) for r in free]
    # a stop string from inside the first response (2 printable ASCII characters, first at 3 or after),
    # and one that never occurs
    at = next(
        i
        for i in range(3, len(texts[0]) - 1)
        if texts[0][i : i + 2].isascii()
        and texts[0][i : i + 2].isprintable()
        and texts[0].find(texts[0][i : i + 2]) == i
    )
    stop = (texts[0][at : at + 2], "never-there")
    p = SamplingParams(max_new_tokens=20, greedy=True, stop=stop)
    ours = sample_batch(model, tok, ids, k=1, seed=0, params=p)
    ref = sample_batch_generate(model, tok, ids, k=1, seed=0, params=p)
    assert [r[0][0] for r in ours] == [r[0][0] for r in ref]
    assert [r[0][2] for r in ours] == [r[0][2] for r in ref]
    first = tok.decode(ours[0][0][0], skip_special_tokens=True)
    assert first.endswith(stop[0]) and first.find(stop[0]) == len(first) - 2 and ours[0][0][2]  # finished
    assert first == texts[0][: at + 2]
    assert len(ours[0][0][0]) < len(free[0][0][0])
    for (resp, logp, fin), (free_resp, free_logp, _) in zip((r[0] for r in ours), (r[0] for r in free)):
        assert free_resp[: len(resp)] == resp  # the same decode, cut
        if len(resp) == len(free_resp):
            assert logp == free_logp
    # the Sample's text is cut after the first occurrence (a token can overhang it: the text is cut inside it)
    samples = [s for b in iter_samples(model, tok, PROMPTS, k=1, params=p, batch_size=3) for s in b]
    assert samples[0].response == cut_at_stop(texts[0], stop).strip()


def test_cut_at_stop_takes_the_first_occurrence():
    assert cut_at_stop("a b. c. d", [". "]) == "a b. "
    assert cut_at_stop("abcabc", ["bc", "a"]) == "a"
    assert cut_at_stop("none here", ["x"]) == "none here"


def test_sampling_params_name_the_bad_key():
    for kw, key in [
        ({"top_k": -1}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"temperature": 0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"top_k": 2.5}, "top_k"),
    ]:
        with pytest.raises(UserError, match=f"sampling.{key} ="):
            SamplingParams(**kw)
    assert SamplingParams(stop="\n\n").stop == ("\n\n",)


def test_generation_config_options_default_off_and_validate():
    g = config_from_dict({}).generation
    p = SamplingParams.from_generation(g)
    assert (p.top_k, p.min_p, p.repetition_penalty, p.stop) == (0, 0.0, 1.0, ())
    assert (p.temperature, p.top_p, p.max_new_tokens) == (g.temperature, g.top_p, g.max_new_tokens)
    g = config_from_dict(
        {"generation": {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "stop": "###"}}
    ).generation
    assert SamplingParams.from_generation(g) == SamplingParams(
        max_new_tokens=128, top_k=20, min_p=0.05, repetition_penalty=1.1, stop=("###",)
    )
    for bad, key in [
        ({"top_k": -2}, "generation.top_k"),
        ({"min_p": 1.5}, "generation.min_p"),
        ({"repetition_penalty": 0}, "generation.repetition_penalty"),
        ({"stop": [""]}, "generation.stop"),
    ]:
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            config_from_dict({"generation": bad})


def test_for_eval_takes_evals_length_and_greedy_and_every_generation_option():
    """Evaluation decodes with the run's generation options (stop strings and repetition penalty shape
    greedy responses too); only the length and greedy come from eval.*."""
    generation = {"max_new_tokens": 64, "temperature": 0.5, "top_p": 0.8, "top_k": 7, "min_p": 0.1}
    generation.update(repetition_penalty=1.3, stop=["###", "\n\n"])
    cfg = config_from_dict({"generation": generation, "eval": {"max_new_tokens": 9}})
    options = {"temperature": 0.5, "top_p": 0.8, "top_k": 7, "min_p": 0.1, "repetition_penalty": 1.3}
    assert SamplingParams.for_eval(cfg.generation, cfg.eval) == SamplingParams(
        max_new_tokens=9, stop=("###", "\n\n"), greedy=True, **options
    )
    cfg.eval.greedy = False
    assert SamplingParams.for_eval(cfg.generation, cfg.eval) == SamplingParams(
        max_new_tokens=9, stop=("###", "\n\n"), greedy=False, **options
    )


def test_greedy_tokens_ignore_temperature_and_the_cuts(lively):
    """Why for_eval may keep temperature, top-k, top-p and min-p when greedy: none of them moves an
    argmax, and both HF paths (the decode loop and model.generate) ignore them, penalty included."""
    model, tok = lively
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    plain = SamplingParams(max_new_tokens=16, greedy=True, repetition_penalty=1.5)
    cuts = SamplingParams(
        max_new_tokens=16, greedy=True, repetition_penalty=1.5, temperature=0.3, top_k=2, top_p=0.5, min_p=0.3
    )
    for fn in (sample_batch, sample_batch_generate):
        assert fn(model, tok, ids, k=1, seed=0, params=cuts) == fn(model, tok, ids, k=1, seed=0, params=plain)


def test_both_backends_take_one_sampler_signature():
    """hf.iter_samples and vllm.iter_samples both take the `Sampler` protocol's arguments (the loop
    calls whichever `load_sampler` returns with them), and a typed SamplingParams only."""
    import inspect

    from sparring.generation import hf, vllm
    from sparring.generation.base import Sampler

    wanted = {
        n: (p.kind, p.default)
        for n, p in inspect.signature(Sampler.__call__).parameters.items()
        if n != "self" and p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert set(wanted) == {"k", "params", "batch_size", "seed", "start", "keys"}
    for fn in (hf.iter_samples, vllm.iter_samples):
        got = inspect.signature(fn).parameters
        assert list(got)[1:3] == ["tokenizer", "prompts"]  # after the model (hf) or the engine (vllm)
        for name, (kind, default) in wanted.items():
            assert got[name].kind is kind, (fn.__module__, name)
            if default is not inspect.Parameter.empty:
                assert got[name].default == default, (fn.__module__, name)
    with pytest.raises(TypeError, match="SamplingParams"):
        next(hf.iter_samples(None, None, ["x"], k=1, params=config_from_dict({}).generation))


def test_every_sampler_takes_only_a_required_sampling_params():
    """`params` is the one way to give the sampling options: keyword-only, required, typed; the loose
    keywords (max_new_tokens, temperature, top_p, greedy) are gone from every sampler."""
    import inspect

    from sparring.generation import base, hf, vllm

    samplers = (hf.sample_batch, hf.sample_batch_generate, hf.sample_batch_with_reference, hf.iter_samples)
    for fn in (*samplers, vllm.iter_samples):
        got = inspect.signature(fn).parameters
        assert got["params"].kind is inspect.Parameter.KEYWORD_ONLY, fn.__qualname__
        assert got["params"].default is inspect.Parameter.empty, fn.__qualname__
        assert not {"max_new_tokens", "temperature", "top_p", "greedy"} & set(got), fn.__qualname__
    assert not hasattr(base, "resolve")
    for wrong in (None, {"max_new_tokens": 4}):
        with pytest.raises(TypeError, match="params must be a sparring.generation.base.SamplingParams"):
            hf.sample_batch(None, None, [[1]], k=1, seed=0, params=wrong)
        with pytest.raises(TypeError, match="params must be a sparring.generation.base.SamplingParams"):
            hf.sample_batch_generate(None, None, [[1]], k=1, seed=0, params=wrong)
    with pytest.raises(TypeError, match="max_new_tokens"):  # the old call shape fails at the call
        hf.sample_batch(None, None, [[1]], k=1, seed=0, max_new_tokens=4)
