"""A persistent judge cache: (judge id, prompt, response a, response b) -> a probability.

Judging is the stage a restarted or re-run iteration should not pay for twice, so its answers go to
one SQLite file in the run directory (`judge_cache.sqlite`, see docs/architecture.md) that survives kills and is
shared across runs and processes.

Storage. One table `judge_prefs(key TEXT PRIMARY KEY, p REAL)`, WITHOUT ROWID. `key` is the sha256
hex digest of the canonical JSON (sort_keys, separators (",", ":"), ensure_ascii, no NaN) of

    ["sparring-judge-cache/2", judge_id, fingerprint(prompt), a, b]

with `fingerprint` the sha256 of the prompt's messages, reference response and task metadata
(`sparring.records.fingerprint`: two prompts with the same text but other IFEval instructions get
other verdicts, so the metadata is in it; the prompt's id is not, so a prompt shared by two prompt
sets shares its entries). ASCII-only JSON and sha256 make the key identical across processes,
machines and Python versions.

What `p` is depends on the judge's shape (sparring.judges.base):
- a pairwise judge: the ordered query q(a, b) = P(a ≻ b | a shown first). Both orders are separate
  entries, and only the ordered queries the cache lacks are asked;
- any other judge: P(a ≻ b) itself. Both orientations are stored, (a, b) and (b, a), so the cache gives
  back exactly the floats the judge produced. The judge is called on a prompt's whole response list
  when any of its pairs is missing (a pointwise judge scores K responses, however many pairs are
  missing). Identical responses a == b share one key; the value stored is P[i, j] for i < j and the
  other side is read as 1 − p.

Durability. The file is in WAL mode with synchronous=NORMAL: a transaction is all-or-nothing, a
process killed in the middle of `put_many` leaves the previously committed state (the next opener
rolls the partial WAL tail back), and a commit survives the death of the process (only a power loss
can lose the last commits, never corrupt the file). A pairwise judge's answers are committed one by one
as they arrive (a remote judge: each answer; a local model: each batch's answers), and a whole-list judge
with a batch size is called about one batch at a time and committed call by call, so a stage that stops
(SIGKILLed, or a judge endpoint that gave up) keeps everything it already paid for but what was in
flight. One commit per answer costs about 18 µs here (measured in docs/judge.md), far below a remote
answer's latency. Readers never block the writer and see committed snapshots only; a busy timeout lets
several processes share the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sparring.errors import UserError
from sparring.judges.base import complementary, is_pairwise, ordered_queries
from sparring.records import Prompt, fingerprint

__all__ = ["CachedJudge", "JudgeCache", "KEY_VERSION", "canonical_json", "pair_key"]

KEY_VERSION = "sparring-judge-cache/2"

_TABLE = "judge_prefs"
_CHUNK = 500  # keys per SELECT ... IN (...): well under SQLite's host-parameter limit


def canonical_json(value: Any) -> str:
    """The one JSON text of `value` that keys are hashed from: sorted keys, no spaces, ASCII only."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot encode {value!r} as canonical JSON for a cache key: {exc}") from None


def _check_response(response: Any) -> str:
    if not isinstance(response, str):
        raise ValueError(f"response must be a string, got {type(response).__name__}")
    return response


class _PromptKeyer:
    """Keys of one (judge, prompt) for many response pairs: the common JSON prefix is hashed once
    and each pair only appends its two encoded responses. Gives exactly `pair_key`'s digests (the
    canonical JSON of a list is its items' canonical JSON joined by "," inside "[...]")."""

    def __init__(self, judge_id: str, prompt: Prompt):
        if not isinstance(judge_id, str) or not judge_id:
            raise ValueError(f"judge id must be a non-empty string, got {judge_id!r}")
        head = ",".join(canonical_json(x) for x in (KEY_VERSION, judge_id, fingerprint(prompt)))
        self._base = hashlib.sha256(("[" + head + ",").encode("ascii"))
        self._enc: dict[str, bytes] = {}

    def _encode(self, response: str) -> bytes:
        enc = self._enc.get(response)
        if enc is None:
            enc = canonical_json(_check_response(response)).encode("ascii")
            self._enc[response] = enc
        return enc

    def key(self, a: str, b: str) -> str:
        h = self._base.copy()
        h.update(self._encode(a) + b"," + self._encode(b) + b"]")
        return h.hexdigest()


def pair_key(judge_id: str, prompt: Prompt, a: str, b: str) -> str:
    """Cache key of the entry for (a, b) under judge `judge_id` for `prompt`. Order matters:
    key(a, b) ≠ key(b, a)."""
    payload = [KEY_VERSION, judge_id, fingerprint(prompt), _check_response(a), _check_response(b)]
    return hashlib.sha256(canonical_json(payload).encode("ascii")).hexdigest()


def _check_probability(key: Any, p: Any) -> float:
    if not isinstance(key, str) or not key:
        raise ValueError(f"cache key must be a non-empty string, got {key!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise ValueError(f"probability for key {key} must be a number, got {p!r}")
    p = float(p)
    if not (0.0 <= p <= 1.0):  # also rejects NaN
        raise ValueError(f"probability for key {key} must be in [0, 1], got {p!r}")
    return p


class JudgeCache:
    """key -> probability store in one SQLite file (WAL). See the module docstring.

    `get_many(keys)` returns {key: p} for the keys present; `put_many(items)` writes a mapping or
    iterable of (key, p) in ONE transaction (all or nothing, replacing existing values). Every
    problem with the file (not creatable, not writable, not a database, corrupt, not a judge cache,
    locked past the busy timeout) is a `UserError` naming the file.
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float = 60.0):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self.invalid = 0  # values read back that were not probabilities (judged again)
        if self.path.is_dir():
            raise UserError(f"{self.path}: judge cache path is a directory, not a file")
        if not self.path.parent.is_dir():
            raise UserError(f"{self.path}: cannot create the judge cache: directory {self.path.parent} does not exist")
        try:
            # isolation_level=None: no implicit transactions; we BEGIN/COMMIT explicitly.
            conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise UserError(f"{self.path}: cannot open the judge cache: {exc}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise UserError(
                    f"{self.path}: the judge cache needs SQLite's WAL journal mode but got "
                    f"{mode!r} (is the file on a filesystem without shared memory, or read-only?)"
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} (key TEXT PRIMARY KEY NOT NULL, p REAL NOT NULL) WITHOUT ROWID"
            )
            columns = [(row[1], row[2].upper()) for row in conn.execute(f"PRAGMA table_info({_TABLE})")]
            if columns != [("key", "TEXT"), ("p", "REAL")]:
                raise UserError(
                    f"{self.path}: not a sparring judge cache (table {_TABLE} has columns "
                    f"{columns}); delete the file or choose another path"
                )
        except UserError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise self._error("cannot open the judge cache", exc) from None
        self._conn = conn

    # -- helpers ---------------------------------------------------------------------------------

    def _error(self, what: str, exc: sqlite3.Error) -> UserError:
        msg = str(exc)
        hint = ""
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            hint = " (the file is corrupt or not an SQLite database; delete it to start a fresh cache)"
        elif "readonly" in msg or "read-only" in msg:
            hint = " (the file or its directory is not writable)"
        elif "locked" in msg or "busy" in msg:
            hint = " (another process held a lock on it past the busy timeout)"
        return UserError(f"{self.path}: {what}: {msg}{hint}")

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"{self.path}: judge cache is closed")
        return self._conn

    # -- API ---------------------------------------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, float]:
        """{key: P} for those of `keys` that are in the cache (missing keys are simply absent).
        All chunks are read in one transaction, so the result is one committed snapshot."""
        wanted = list(dict.fromkeys(keys))
        out: dict[str, float] = {}
        if not wanted:
            return out
        db = self._db
        try:
            db.execute("BEGIN")
            try:
                for start in range(0, len(wanted), _CHUNK):
                    chunk = wanted[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    for key, p in db.execute(f"SELECT key, p FROM {_TABLE} WHERE key IN ({marks})", chunk):
                        # a value that is not a probability (a damaged or foreign file) is not trusted:
                        # it reads as missing, so the pair is judged again and the value replaced
                        if isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0:
                            out[key] = float(p)
                        else:
                            self.invalid += 1
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._error("cannot read the judge cache", exc) from None
        return out

    def put_many(self, items: Mapping[str, float] | Iterable[tuple[str, float]]) -> int:
        """Write (key, P) items in ONE transaction: after a crash or kill either all of them are in
        the file or none. Existing keys are overwritten. Returns the number of items written."""
        pairs = items.items() if isinstance(items, Mapping) else items
        rows = [(k, _check_probability(k, p)) for k, p in pairs]  # validate before writing
        if not rows:
            return 0
        db = self._db
        try:
            # IMMEDIATE takes the write lock now (waiting up to the busy timeout), not mid-way.
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(f"INSERT OR REPLACE INTO {_TABLE} (key, p) VALUES (?, ?)", rows)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._error("cannot write the judge cache", exc) from None
        return len(rows)

    def __len__(self) -> int:
        try:
            return self._db.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0]
        except sqlite3.Error as exc:
            raise self._error("cannot read the judge cache", exc) from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.path)!r})"


class CachedJudge:
    """Wraps any judge with a `JudgeCache` (or with none: `cache=None` judges everything afresh through
    the same code, so a run without the cache computes exactly what a run with it does).

    `preferences_many(prompts, response_lists)` returns the judge's [K, K] matrices. Every entry is
    looked up first (one batched lookup); only what is missing is asked. A pairwise judge's answers are
    committed one transaction each as `on_result` reports them (a judge that never calls it: one per
    call of `chunk` queries); a whole-list judge's, one transaction per call (of `chunk` prompts, by
    default about one batch of the judge's `batch_size`). A value already cached keeps its cached
    value, so a re-run returns what the first run returned. The diagonal is ½.

    After a call, `orders` holds, for a pairwise judge, each prompt's matrix of ordered queries
    Q[i, j] = q(y_i, y_j) (NaN on the diagonal and for identical responses), for the diagnostics, as
    the judge's `order_view` reads its stored values when it has one (NaN for an abstention).
    `hits` / `misses` count entries found / asked now (ordered queries for a pairwise judge,
    unordered pairs {i, j} otherwise).
    """

    def __init__(self, judge: Any, cache: JudgeCache | str | os.PathLike | None, *, chunk: int | None = None):
        if not isinstance(getattr(judge, "id", None), str) or not callable(getattr(judge, "preferences_many", None)):
            raise TypeError(
                "CachedJudge needs a judge with a string `.id` and a `.preferences_many(prompts, "
                f"response_lists)` method, got {judge!r}"
            )
        self.judge = judge
        self.pairwise = is_pairwise(judge)
        self._owns_cache = cache is not None and not isinstance(cache, JudgeCache)
        self.cache = cache if cache is None or isinstance(cache, JudgeCache) else JudgeCache(cache)
        attach = getattr(judge, "attach_cache", None)
        if callable(attach):  # a judge made of judges (ensemble): each member's verdicts under its own id
            attach(self.cache)
        self.chunk = chunk  # None: chosen per judge (_pairwise_chunk, _prompt_chunks)
        self.hits = 0
        self.misses = 0
        self.orders: list[np.ndarray] = []

    @property
    def id(self) -> str:
        return self.judge.id

    def __repr__(self) -> str:
        return f"CachedJudge({self.judge!r}, {self.cache!r})"

    def close(self) -> None:
        """Close the cache if this object opened it (a JudgeCache passed in is the caller's)."""
        if self._owns_cache:
            self.cache.close()

    def __enter__(self) -> CachedJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, keys: list[str]) -> dict[str, float]:
        return self.cache.get_many(keys) if self.cache is not None else {}

    def _put(self, items: dict[str, float]) -> None:
        if self.cache is not None and items:
            self.cache.put_many(items)

    def preferences(self, prompt: Prompt, responses: Sequence[str]) -> np.ndarray:
        return self.preferences_many([prompt], [responses])[0]

    def preferences_many(
        self, prompts: Sequence[Prompt], response_lists: Sequence[Sequence[str]], *, progress: bool = False
    ) -> list[np.ndarray]:
        """One [K_n, K_n] float64 matrix per prompt; see the class docstring."""
        prompts = list(prompts)
        response_lists = [list(r) for r in response_lists]
        if len(prompts) != len(response_lists):
            raise ValueError(
                f"got {len(prompts)} prompts but {len(response_lists)} response lists; they must be aligned"
            )
        if self.pairwise:
            return self._pairwise(prompts, response_lists, progress)
        return self._whole_lists(prompts, response_lists, progress)

    # -- pairwise judges: ordered queries ----------------------------------------------------------

    def _pairwise(self, prompts, response_lists, progress) -> list[np.ndarray]:
        judge_id = self.judge.id
        queries, where = ordered_queries(prompts, response_lists)
        keyers = [_PromptKeyer(judge_id, p) for p in prompts]
        keys = [keyers[n].key(a, b) for (n, _, _), (_, a, b) in zip(where, queries)]
        known = self._get(keys)
        # missing entries, each asked once (the same prompt and responses twice in a batch share keys)
        first_of: dict[str, int] = {}
        todo = [m for m, key in enumerate(keys) if key not in known and first_of.setdefault(key, m) == m]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        chunk = self._pairwise_chunk()
        bar = tqdm(total=len(todo), desc="judging", unit="query", disable=not progress or not todo, dynamic_ncols=True)
        try:
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                kept: set[str] = set()

                def keep(n: int, q: float, part=part, kept=kept) -> None:
                    # committed as it arrives (one transaction per answer): a kill loses only the
                    # requests still in flight, never an answer already received (docs/judge.md)
                    key = keys[part[n]]
                    known[key] = _check_probability(key, q)
                    self._put({key: known[key]})
                    kept.add(key)
                    bar.update(1)

                answers = self.judge.compare_many([queries[m] for m in part], on_result=keep)
                if len(answers) != len(part):
                    raise ValueError(f"judge {judge_id} answered {len(answers)} of {len(part)} queries")
                rest = {keys[m]: _check_probability(keys[m], q) for m, q in zip(part, answers) if keys[m] not in kept}
                if rest:  # a judge that does not call on_result: its chunk is one transaction
                    known.update(rest)
                    self._put(rest)
                    bar.update(len(rest))
        finally:
            bar.close()
        Qs = [np.full((len(r), len(r)), np.nan) for r in response_lists]
        for (n, i, j), key in zip(where, keys):
            Qs[n][i, j] = known[key]
        view = getattr(self.judge, "order_view", None)  # how a judge's stored values read as q (diagnostics)
        self.orders = [view(Q) for Q in Qs] if callable(view) else Qs
        return [self.judge.combine(Q) for Q in Qs]

    def _pairwise_chunk(self) -> int:
        """Ordered queries per `compare_many` call. A judge that reports each answer (or each batch) as it
        is done (`streams`) gets large calls, whose answers are committed one by one anyway; a judge that
        reports only at the end of a call gets one batch of its own (`batch_size`) per call, so a kill
        loses at most that batch."""
        if self.chunk is not None:
            return self.chunk
        batch = getattr(self.judge, "batch_size", None)
        if getattr(self.judge, "streams", False) or not isinstance(batch, int) or batch < 1:
            return 256
        return batch

    def _prompt_chunks(self, need: list[int], response_lists) -> list[list[int]]:
        """The prompts of each `preferences_many` call of a whole-list judge, committed call by call: a
        judge with a `batch_size` (texts per forward pass; a local model) gets one batch per call (as many
        prompts as their responses fit in it; a prompt with more responses alone), so a kill loses at
        most one batch; any other judge (IFEval's checks, a Python function) 64 prompts per call."""
        batch = getattr(self.judge, "batch_size", None)
        if self.chunk is not None or not isinstance(batch, int) or batch < 1:
            size = self.chunk or 64
            return [need[s : s + size] for s in range(0, len(need), size)]
        chunks: list[list[int]] = []
        texts = 0
        for n in need:
            k = len(response_lists[n])
            if not chunks or texts + k > batch:  # the next prompt would not fit: a new call
                chunks.append([])
                texts = 0
            chunks[-1].append(n)
            texts += k
        return chunks

    # -- every other judge: whole response lists ---------------------------------------------------

    def _whole_lists(self, prompts, response_lists, progress) -> list[np.ndarray]:
        judge_id = self.judge.id
        plans: list[list[tuple[int, int, str, str]]] = []
        wanted: list[str] = []
        for prompt, responses in zip(prompts, response_lists):
            keyer = _PromptKeyer(judge_id, prompt)
            plan = []
            for i in range(len(responses)):
                for j in range(i + 1, len(responses)):
                    a, b = responses[i], responses[j]
                    kij = keyer.key(a, b)
                    kji = kij if a == b else keyer.key(b, a)
                    plan.append((i, j, kij, kji))
                    wanted += [kij, kji]
            plans.append(plan)
        known = self._get(wanted)
        need, pending = [], set()
        for n, plan in enumerate(plans):
            missing_pairs = [q for q in plan if q[2] not in known or q[3] not in known]
            missing = {key for q in missing_pairs for key in q[2:] if key not in known}
            if missing - pending:  # else an earlier prompt of this batch (the same again) judges them all
                need.append(n)
                pending |= missing
                self.misses += len(missing_pairs)
                self.hits += len(plan) - len(missing_pairs)
            else:
                self.hits += len(plan)
        bar = tqdm(total=len(need), desc="judging", unit="prompt", disable=not progress or not need, dynamic_ncols=True)
        try:
            for part in self._prompt_chunks(need, response_lists):
                mats = self.judge.preferences_many([prompts[n] for n in part], [response_lists[n] for n in part])
                new: dict[str, float] = {}
                for n, fresh in zip(part, mats):
                    k = len(response_lists[n])
                    fresh = np.asarray(fresh, dtype=np.float64)
                    if fresh.shape != (k, k):
                        raise ValueError(f"judge {judge_id} returned a matrix of shape {fresh.shape} for {k} responses")
                    for i, j, kij, kji in plans[n]:
                        if kij not in known or kji not in known:
                            known[kij] = new[kij] = float(fresh[i, j])
                            if kji != kij:
                                known[kji] = new[kji] = float(fresh[j, i])
                self._put(new)
                bar.update(len(part))
        finally:
            bar.close()
        out: list[np.ndarray] = []
        for responses, plan in zip(response_lists, plans):
            k = len(responses)
            P = np.full((k, k), 0.5, dtype=np.float64)
            for i, j, kij, kji in plan:
                P[i, j] = known[kij]
                P[j, i] = known[kji] if kji != kij else complementary(known[kij])[1]
            out.append(P)
        self.orders = []
        return out
