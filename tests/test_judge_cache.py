"""The persistent judge cache: hits across objects and processes, keys that separate judges and
prompts, exact matrices, kill-safety of writes, and clear errors for bad files."""

import hashlib
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from sparring.errors import UserError
from sparring.judges import IFEvalJudge
from sparring.judges.cache import KEY_VERSION, CachedJudge, JudgeCache, _PromptKeyer, pair_key
from sparring.records import fingerprint, user_prompt

RECORD = user_prompt(
    "1",
    "Tell me about cats.",
    instruction_id_list=["punctuation:no_comma", "length_constraints:number_words"],
    kwargs=[{}, {"num_words": 5, "relation": "less than"}],
)
# Same prompt text, one kwarg changed: responses of 5 words now pass the word limit.
RECORD_6 = user_prompt(
    "2",
    "Tell me about cats.",
    instruction_id_list=["punctuation:no_comma", "length_constraints:number_words"],
    kwargs=[{}, {"num_words": 6, "relation": "less than"}],
)
OTHER = user_prompt("3", "Shout about dogs.", instruction_id_list=["punctuation:no_comma"], kwargs=[{}])
# Scores under RECORD: 1.0, 0.5 (comma), 0.5 (too long), 0.0 (both), 1.0 (5 words would fail
# RECORD's "< 5"; this one has 4), and a duplicate of the first.
RESPONSES = [
    "Cats purr a lot",
    "Cats, they purr",
    "cats sleep all day long and purr",
    "Cats, by the way, sleep all day long",
    "one two three four",
    "Cats purr a lot",
]
OTHER_RESPONSES = ["DOGS BARK!", "Dogs, bark.", "DOGS RULE"]


def test_second_judging_makes_zero_judge_calls_and_identical_matrices(tmp_path):
    judge = IFEvalJudge(tau=0.1)
    expected = [IFEvalJudge(0.1).preferences(RECORD, RESPONSES), IFEvalJudge(0.1).preferences(OTHER, OTHER_RESPONSES)]
    with JudgeCache(tmp_path / "c.sqlite") as cache:
        cj = CachedJudge(judge, cache)
        first = cj.preferences_many([RECORD, OTHER], [RESPONSES, OTHER_RESPONSES], progress=True)
        # One judge call per response on a miss (the whole list is scored once).
        assert judge.calls == len(RESPONSES) + len(OTHER_RESPONSES)
        n_pairs = math.comb(len(RESPONSES), 2) + math.comb(len(OTHER_RESPONSES), 2)
        assert (cj.hits, cj.misses) == (0, n_pairs)
        # One row per ordered pair of distinct contents (5 distinct responses, then 3), plus one
        # shared by both sides of the identical pair (0, 5): (0, j) and (5, j) have the same key.
        assert len(cache) == 2 * math.comb(5, 2) + 1 + 2 * math.comb(3, 2)
        calls = judge.calls
        second = cj.preferences_many([RECORD, OTHER], [RESPONSES, OTHER_RESPONSES])
        assert judge.calls == calls
        assert (cj.hits, cj.misses) == (n_pairs, n_pairs)
        single = cj.preferences(RECORD, RESPONSES)
        assert judge.calls == calls
    for got in (first, second):
        assert len(got) == 2
        for m, e in zip(got, expected):
            assert m.dtype == np.float64
            assert np.array_equal(m, e)
    assert np.array_equal(single, expected[0])
    # The duplicate responses (0 and 5): 0.5 on the diagonal and between them; the same row.
    P = second[0]
    assert P[0, 5] == P[5, 0] == 0.5
    assert np.array_equal(P[0], P[5])
    assert np.array_equal(np.diag(P), np.full(len(RESPONSES), 0.5))
    assert np.array_equal(P + P.T, np.ones_like(P))
    # And the values are the judge's: sigma((1.0 - 0.5) / 0.1) for response 0 over response 1.
    assert P[0, 1] == pytest.approx(1 / (1 + math.exp(-5)))
    assert P[0, 3] == pytest.approx(1 / (1 + math.exp(-10)))


def test_new_cache_object_on_same_file_hits(tmp_path):
    path = tmp_path / "c.sqlite"
    with JudgeCache(path) as cache:
        first = CachedJudge(IFEvalJudge(0.1), cache).preferences(RECORD, RESPONSES)
    judge = IFEvalJudge(0.1)
    with CachedJudge(judge, path) as cj:  # opens its own JudgeCache, as a new process would
        again = cj.preferences(RECORD, RESPONSES)
        assert judge.calls == 0
        assert cj.misses == 0 and cj.hits == math.comb(len(RESPONSES), 2)
    assert np.array_equal(first, again)
    # A truly new process (its own interpreter, PYTHONHASHSEED irrelevant) finds them too.
    code = textwrap.dedent(
        """
        import json, sys
        from sparring.records import user_prompt
        from sparring.judges import IFEvalJudge
        from sparring.judges.cache import CachedJudge
        rec = user_prompt(**json.loads(sys.argv[2]))
        judge = IFEvalJudge(0.1)
        with CachedJudge(judge, sys.argv[1]) as cj:
            P = cj.preferences(rec, json.loads(sys.argv[3]))
        print(json.dumps({"calls": judge.calls, "misses": cj.misses, "P": P.tolist()}))
        """
    )
    rec_json = json.dumps({"id": RECORD.id, "text": RECORD.text, **RECORD.meta})
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path), rec_json, json.dumps(RESPONSES)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    result = json.loads(proc.stdout)
    assert result["calls"] == 0 and result["misses"] == 0
    assert np.array_equal(np.array(result["P"]), first)


def test_different_judge_id_misses(tmp_path):
    with JudgeCache(tmp_path / "c.sqlite") as cache:
        CachedJudge(IFEvalJudge(0.1), cache).preferences(RECORD, RESPONSES)
        n = len(cache)
        judge = IFEvalJudge(tau=1.0)
        cj = CachedJudge(judge, cache)
        P = cj.preferences(RECORD, RESPONSES)
        assert judge.calls == len(RESPONSES)
        assert cj.hits == 0 and cj.misses == math.comb(len(RESPONSES), 2)
        assert len(cache) == 2 * n
    assert np.array_equal(P, IFEvalJudge(1.0).preferences(RECORD, RESPONSES))
    assert P[0, 1] == pytest.approx(1 / (1 + math.exp(-0.5)))  # not the tau=0.1 value


def test_same_prompt_text_with_different_instructions_misses(tmp_path):
    with JudgeCache(tmp_path / "c.sqlite") as cache:
        CachedJudge(IFEvalJudge(0.1), cache).preferences(RECORD, RESPONSES)
        for rec in (
            RECORD_6,  # a kwarg value differs
            user_prompt(
                "1", RECORD.text, instruction_id_list=["punctuation:no_comma"], kwargs=[{}]
            ),  # an instruction fewer
        ):
            judge = IFEvalJudge(0.1)
            cj = CachedJudge(judge, cache)
            P = cj.preferences(rec, RESPONSES)
            assert judge.calls == len(RESPONSES)
            assert cj.hits == 0
            assert np.array_equal(P, IFEvalJudge(0.1).preferences(rec, RESPONSES))
        # And the verdicts really can differ: 5 words fail "< 5" but pass "< 6".
        assert not np.array_equal(
            IFEvalJudge(0.1).preferences(RECORD, RESPONSES[:1] + ["a b c d e"]),
            IFEvalJudge(0.1).preferences(RECORD_6, RESPONSES[:1] + ["a b c d e"]),
        )
        # kwargs key order does not matter (canonical JSON sorts keys).
        reordered = user_prompt(
            "9",
            RECORD.text,
            instruction_id_list=RECORD.meta["instruction_id_list"],
            kwargs=[{}, {"relation": "less than", "num_words": 5}],
        )
        judge = IFEvalJudge(0.1)
        cj = CachedJudge(judge, cache)
        cj.preferences(reordered, RESPONSES)
        assert judge.calls == 0 and cj.misses == 0


def test_key_is_documented_canonical_json_hash():
    fp_payload = {
        "messages": [{"role": "user", "content": RECORD.text}],
        "reference": None,
        "meta": {
            "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
            "kwargs": [{}, {"num_words": 5, "relation": "less than"}],
        },
    }
    fp = hashlib.sha256(
        json.dumps(fp_payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    ).hexdigest()
    assert fingerprint(RECORD) == fp
    payload = [KEY_VERSION, "ifeval-v1:tau=0.1", fp, "a", "b\u00e9"]
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    expected = hashlib.sha256(text.encode("ascii")).hexdigest()
    assert KEY_VERSION == "sparring-judge-cache/2"
    assert pair_key("ifeval-v1:tau=0.1", RECORD, "a", "b\u00e9") == expected
    assert pair_key("ifeval-v1:tau=0.1", RECORD, "b\u00e9", "a") != expected
    # the prompt's id is not part of the key; its messages are
    assert (
        pair_key("ifeval-v1:tau=0.1", user_prompt("other id", RECORD.text, **RECORD.meta), "a", "b\u00e9") == expected
    )
    assert pair_key("ifeval-v1:tau=0.1", user_prompt("1", RECORD.text + " ", **RECORD.meta), "a", "b\u00e9") != expected
    # The batched path (prefix hashed once) gives the same digests as pair_key.
    keyer = _PromptKeyer("ifeval-v1:tau=0.1", RECORD)
    for a, b in [("a", "b\u00e9"), ("", "x"), ("same", "same"), ('q"uote\n', "\u4e2d")]:
        assert keyer.key(a, b) == pair_key("ifeval-v1:tau=0.1", RECORD, a, b)
    with pytest.raises(ValueError, match="response must be a string"):
        pair_key("j", RECORD, "a", None)


class _NoisyJudge:
    """A judge whose two sides are computed separately (so P[i,j] + P[j,i] need not be exactly 1 in
    floating point): the cache must give back its exact floats."""

    id = "noisy-v1"

    def __init__(self):
        self.calls = 0

    def preferences_many(self, records, response_lists):
        return [self.preferences(r, x) for r, x in zip(records, response_lists)]

    def preferences(self, record, responses):
        self.calls += 1
        h = [int(hashlib.sha256(r.encode()).hexdigest()[:8], 16) / 2**32 * 7 for r in responses]
        k = len(responses)
        P = np.full((k, k), 0.5)
        for i in range(k):
            for j in range(k):
                if i != j:
                    P[i, j] = 1 / (1 + math.exp(-(h[i] - h[j])))
        return P


def test_exact_floats_partial_hits_and_in_batch_reuse(tmp_path):
    judge = _NoisyJudge()
    responses = [f"response {i}" for i in range(7)]
    direct = _NoisyJudge().preferences(None, responses)
    with JudgeCache(tmp_path / "c.sqlite") as cache:
        cj = CachedJudge(judge, cache)
        first = cj.preferences(OTHER, responses[:4])
        assert np.array_equal(first, direct[:4, :4])
        # Three new responses: the judge is called once on the whole list, the 6 known pairs hit.
        full = cj.preferences(OTHER, responses)
        assert judge.calls == 2
        assert (cj.hits, cj.misses) == (6, 6 + math.comb(7, 2) - 6)
        assert np.array_equal(full, direct)
        # The same prompt twice in one batch: judged once, the second is served from the batch.
        cj2 = CachedJudge(judge, cache)
        out = cj2.preferences_many([RECORD, RECORD, OTHER], [responses, responses, responses])
        assert judge.calls == 3
        assert (cj2.hits, cj2.misses) == (2 * 21, 21)
        for m in out:
            assert np.array_equal(m, direct)
        # Empty and single-response lists are fine and need no judge.
        assert cj2.preferences(RECORD, []).shape == (0, 0)
        assert np.array_equal(cj2.preferences(RECORD, ["x"]), np.array([[0.5]]))
        assert judge.calls == 3
        with pytest.raises(ValueError, match="aligned"):
            cj2.preferences_many([RECORD], [])


def test_put_get_validation(tmp_path):
    with JudgeCache(tmp_path / "c.sqlite") as cache:
        keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1200)]
        assert cache.put_many({k: i / 1200 for i, k in enumerate(keys)}) == 1200
        got = cache.get_many(keys + ["absent"])  # more keys than one SELECT chunk
        assert got == {k: i / 1200 for i, k in enumerate(keys)}
        cache.put_many([(keys[0], 0.25)])  # overwrite
        assert cache.get_many([keys[0]]) == {keys[0]: 0.25}
        for bad in (1.5, -0.1, float("nan"), "0.3", True):
            with pytest.raises(ValueError, match="probability"):
                cache.put_many([(keys[1], 0.5), ("k", bad)])
        assert cache.get_many([keys[1]]) == {keys[1]: 1 / 1200}  # nothing of a bad batch written
        assert len(cache) == 1200
    with pytest.raises(ValueError, match="closed"):
        cache.get_many(keys[:1])


WRITER = textwrap.dedent(
    """
    import hashlib, sys
    from sparring.judges.cache import JudgeCache
    path, size = sys.argv[1], int(sys.argv[2])
    cache = JudgeCache(path)
    b = 0
    while True:
        cache.put_many({hashlib.sha256(f"kill:{b}:{i}".encode()).hexdigest(): ((b * 31 + i) % 101) / 100
                        for i in range(size)})
        if b == 0:
            print("committed", flush=True)
        b += 1
    """
)


def _batch(b, size):
    return {hashlib.sha256(f"kill:{b}:{i}".encode()).hexdigest(): ((b * 31 + i) % 101) / 100 for i in range(size)}


@pytest.mark.parametrize("rep", range(4))
def test_sigkill_mid_write_leaves_last_committed_state(tmp_path, rep):
    path, size = tmp_path / "kill.sqlite", 400
    rng = random.Random()
    delay = rng.uniform(0.0, 0.5)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(size)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()  # the first batch is committed
        assert line.strip() == "committed", proc.stderr.read() if proc.poll() is not None else line
        # A reader in this process while the writer runs sees whole batches only.
        with JudgeCache(path) as reader:
            t_end = time.monotonic() + delay
            while time.monotonic() < t_end:
                assert len(reader) % size == 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL  # it was killed, not finished

    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = dict(raw.execute("SELECT key, p FROM judge_prefs"))
    finally:
        raw.close()
    n, rest = divmod(len(rows), size)
    assert rest == 0 and n >= 1, f"{len(rows)} rows after a kill at {delay:.3f}s"
    expected = {}
    for b in range(n):
        expected.update(_batch(b, size))
    assert rows == expected  # batches 0..n-1 complete with the right values, nothing else
    with JudgeCache(path) as cache:  # and the cache keeps working
        assert cache.get_many(list(_batch(0, size))) == _batch(0, size)
        cache.put_many(_batch(n, size))
        assert len(cache) == (n + 1) * size


def test_unusable_paths_give_user_error_naming_the_file(tmp_path):
    d = tmp_path / "a_dir"
    d.mkdir()
    with pytest.raises(UserError, match="a_dir.*directory"):
        JudgeCache(d)
    missing = tmp_path / "no_such_dir" / "c.sqlite"
    with pytest.raises(UserError, match=r"no_such_dir.*c\.sqlite.*does not exist"):
        JudgeCache(missing)
    with pytest.raises(UserError, match="no_such_dir"):
        CachedJudge(IFEvalJudge(), missing)


def test_corrupt_or_foreign_files_give_user_error_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(UserError, match=r"garbage\.sqlite.*(not a database|corrupt)"):
        JudgeCache(garbage)

    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE judge_prefs (a INTEGER, b BLOB)")
    con.commit()
    con.close()
    with pytest.raises(UserError, match=r"foreign\.sqlite.*not a sparring judge cache"):
        JudgeCache(foreign)

    # A real cache whose pages after the header page are overwritten.
    broken = tmp_path / "broken.sqlite"
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3000)]
    with JudgeCache(broken) as cache:
        cache.put_many({k: 0.5 for k in keys})
    data = bytearray(broken.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) > 4 * page
    data[page:] = bytes([0xA5]) * (len(data) - page)
    broken.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"broken\.sqlite"):
        with JudgeCache(broken) as cache:
            len(cache)
            cache.get_many(keys)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root can write read-only files")
def test_read_only_file_gives_user_error_on_write(tmp_path):
    path = tmp_path / "ro.sqlite"
    with JudgeCache(path) as cache:
        cache.put_many({"k": 0.5})
    path.chmod(0o444)
    try:
        with pytest.raises(UserError, match=r"ro\.sqlite"):
            with JudgeCache(path) as cache:
                cache.put_many({"k2": 0.5})
    finally:
        path.chmod(0o644)
