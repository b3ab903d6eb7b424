"""A persistent judge cache: (judge id, prompt, response a, response b) -> P(a ≻ b).

Judging is the stage a restarted or re-run iteration should not pay for twice, so its answers go to
one SQLite file in the run directory (`judge_cache.sqlite`, see DESIGN.md) that survives kills and is
shared across runs and processes.

Storage. One table `judge_prefs(key TEXT PRIMARY KEY, p REAL)`, WITHOUT ROWID. `key` is the sha256
hex digest of the canonical JSON (sort_keys, separators (",", ":"), ensure_ascii, no NaN) of

    ["sparring-judge-cache/1", judge_id, prompt, [[instruction_id, kwargs], ...], a, b]

and `p` = P(a ≻ b). The prompt's instructions and their kwargs are part of the key because two
prompts with the same text but different instructions get different verdicts; a kwargs dict is
encoded with sorted keys (and a missing / null kwargs entry as {}), so key order does not matter.
ASCII-only JSON and sha256 make the key identical across processes, machines and Python versions.

Both orientations of a pair are stored, (a, b) -> P(a ≻ b) and (b, a) -> P(b ≻ a), so the cache gives
back exactly the floats the judge produced, for any judge (deriving one side as 1 − p would change a
judge whose two sides do not sum to 1 exactly in floating point by an ulp). The price is two rows
(~100 bytes each) per pair. Identical responses a == b share one key for both orientations; the
value stored is P[i, j] for i < j and the other side is read as 1 − p (0.5 for any sane judge).

Durability. The file is in WAL mode with synchronous=NORMAL: a transaction is all-or-nothing, a
process killed in the middle of `put_many` leaves the previously committed state (the next opener
rolls the partial WAL tail back), and a commit survives the death of the process (only a power loss
can lose the last commits, never corrupt the file). Readers never block the writer and see committed
snapshots only; a busy timeout lets several processes share the file (rank 0 writes, other ranks may
read).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sparring.errors import UserError

__all__ = ["CachedJudge", "JudgeCache", "KEY_VERSION", "canonical_json", "pair_key"]

KEY_VERSION = "sparring-judge-cache/1"

_TABLE = "judge_prefs"
_CHUNK = 500  # keys per SELECT ... IN (...): well under SQLite's host-parameter limit


def canonical_json(value: Any) -> str:
    """The one JSON text of `value` that keys are hashed from: sorted keys, no spaces, ASCII only."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot encode {value!r} as canonical JSON for a cache key: {exc}") from None


def _record_parts(record: Any) -> tuple[str, list]:
    """(prompt text, [[instruction_id, kwargs], ...]) of a PromptRecord or a mapping like one."""
    if isinstance(record, Mapping):
        prompt = record["prompt"]
        ids = record.get("instruction_id_list", ())
        kwargs = record.get("kwargs", ())
    else:
        prompt = record.prompt
        ids = record.instruction_id_list
        kwargs = record.kwargs
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    ids, kwargs = list(ids), list(kwargs)
    if len(ids) != len(kwargs):
        raise ValueError(f"instruction_id_list has {len(ids)} entries but kwargs has {len(kwargs)}")
    return prompt, [[str(i), dict(kw or {})] for i, kw in zip(ids, kwargs)]


def _check_response(response: Any) -> str:
    if not isinstance(response, str):
        raise ValueError(f"response must be a string, got {type(response).__name__}")
    return response


class _PromptKeyer:
    """Keys of one (judge, prompt) for many response pairs: the common JSON prefix is hashed once
    and each pair only appends its two encoded responses. Gives exactly `pair_key`'s digests (the
    canonical JSON of a list is its items' canonical JSON joined by "," inside "[...]")."""

    def __init__(self, judge_id: str, record: Any):
        if not isinstance(judge_id, str) or not judge_id:
            raise ValueError(f"judge id must be a non-empty string, got {judge_id!r}")
        prompt, instructions = _record_parts(record)
        head = ",".join(canonical_json(x) for x in (KEY_VERSION, judge_id, prompt, instructions))
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


def pair_key(judge_id: str, record: Any, a: str, b: str) -> str:
    """Cache key of P(a ≻ b) under judge `judge_id` for the prompt `record` (a PromptRecord or a
    mapping with prompt / instruction_id_list / kwargs). Order matters: key(a, b) ≠ key(b, a)."""
    prompt, instructions = _record_parts(record)
    payload = [KEY_VERSION, judge_id, prompt, instructions, _check_response(a), _check_response(b)]
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
        if self.path.is_dir():
            raise UserError(f"{self.path}: judge cache path is a directory, not a file")
        if not self.path.parent.is_dir():
            raise UserError(
                f"{self.path}: cannot create the judge cache: directory {self.path.parent} "
                "does not exist"
            )
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
                f"CREATE TABLE IF NOT EXISTS {_TABLE} "
                "(key TEXT PRIMARY KEY NOT NULL, p REAL NOT NULL) WITHOUT ROWID"
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
                    out.update(
                        db.execute(f"SELECT key, p FROM {_TABLE} WHERE key IN ({marks})", chunk)
                    )
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
    """Wraps any judge (`.id`, `.preferences(record, responses)`) with a `JudgeCache`.

    `preferences(record, responses)` returns the wrapped judge's [K, K] matrix, looking every
    off-diagonal pair up first. Only when some pair of the prompt is missing is the judge called,
    on the prompt's whole response list (for `IFEvalJudge`, whose cost is one check per response,
    that is the cheapest call: K responses scored, not one call per missing pair); the missing
    pairs are then stored. A pair already cached keeps its cached value, so a re-run returns what
    the first run returned. The diagonal is always 0.5.

    `preferences_many(records, response_lists)` does the same for a whole stage with one batched
    lookup and one write transaction. `hits` / `misses` count unordered pairs {i, j}, i < j:
    found in the cache (or judged earlier in the same batch) / judged now.
    """

    def __init__(self, judge: Any, cache: JudgeCache | str | os.PathLike):
        if not isinstance(getattr(judge, "id", None), str) or not callable(
            getattr(judge, "preferences", None)
        ):
            raise TypeError(
                "CachedJudge needs a judge with a string `.id` and a `.preferences(record, "
                f"responses)` method, got {judge!r}"
            )
        self.judge = judge
        self._owns_cache = not isinstance(cache, JudgeCache)
        self.cache = cache if isinstance(cache, JudgeCache) else JudgeCache(cache)
        self.hits = 0
        self.misses = 0

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

    def preferences(self, record: Any, responses: Sequence[str]) -> np.ndarray:
        return self.preferences_many([record], [responses])[0]

    def preferences_many(
        self,
        records: Sequence[Any],
        response_lists: Sequence[Sequence[str]],
        *,
        progress: bool = False,
    ) -> list[np.ndarray]:
        """One [K_n, K_n] float64 matrix per prompt; see the class docstring."""
        records = list(records)
        response_lists = [list(r) for r in response_lists]
        if len(records) != len(response_lists):
            raise ValueError(
                f"got {len(records)} prompts but {len(response_lists)} response lists; "
                "they must be aligned"
            )
        judge_id = self.judge.id

        # Keys of every ordered pair (i, j), i != j, of every prompt; then one lookup for all.
        plans: list[list[tuple[int, int, str, str]]] = []
        wanted: list[str] = []
        for record, responses in zip(records, response_lists):
            keyer = _PromptKeyer(judge_id, record)
            plan = []
            for i in range(len(responses)):
                for j in range(i + 1, len(responses)):
                    a, b = responses[i], responses[j]
                    kij = keyer.key(a, b)
                    kji = kij if a == b else keyer.key(b, a)
                    plan.append((i, j, kij, kji))
                    wanted.append(kij)
                    wanted.append(kji)
            plans.append(plan)
        known = self.cache.get_many(wanted)

        new: dict[str, float] = {}
        out: list[np.ndarray] = []
        bar = tqdm(total=len(records), desc="judging", unit="prompt", disable=not progress)
        try:
            for record, responses, plan in zip(records, response_lists, plans):
                k = len(responses)
                missing = [q for q in plan if q[2] not in known or q[3] not in known]
                P = np.full((k, k), 0.5, dtype=np.float64)
                if missing:
                    fresh = np.asarray(self.judge.preferences(record, responses), dtype=np.float64)
                    if fresh.shape != (k, k):
                        raise ValueError(
                            f"judge {judge_id} returned a matrix of shape {fresh.shape} for "
                            f"{k} responses"
                        )
                    for i, j, kij, kji in missing:
                        known[kij] = new[kij] = float(fresh[i, j])
                        if kji != kij:
                            known[kji] = new[kji] = float(fresh[j, i])
                self.hits += len(plan) - len(missing)
                self.misses += len(missing)
                for i, j, kij, kji in plan:
                    P[i, j] = known[kij]
                    P[j, i] = known[kji] if kji != kij else 1.0 - known[kij]
                out.append(P)
                bar.update(1)
                if progress:
                    bar.set_postfix(hits=self.hits, misses=self.misses, refresh=False)
        finally:
            bar.close()
        # One transaction for the whole batch: a kill before this line loses this batch's new
        # verdicts (they are recomputed on the re-run), never leaves a partial batch.
        self.cache.put_many(new)
        return out
