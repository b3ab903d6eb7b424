"""Transport for an LLM judge: label many conversations through an OpenAI-compatible Chat Completions endpoint.

The judge renders each judging conversation so that the answer is ONE label token ("A" or "B"). This module
sends each conversation to `{base_url}/chat/completions` (vLLM, SGLang, a hosted API) and gives back, per
conversation, the log-probabilities of the labels among the top log-probs of the first generated token, and
the generated text (for servers that return no log-probs, so the judge can parse a verdict instead).
With `logprobs=False` (the arena_hard protocol: the judge writes a whole judgment, up to `max_tokens`) no
log-probs are asked for and only the text and the finish reason come back. A `follow_up` function may
continue a conversation after its answer (arena_hard's re-ask after a judgment without a verdict): the
conversation it returns is sent at once by the same worker, and only the last answer is delivered, with the
earlier ones in its `earlier`.

Behaviour, in short:

- Concurrency: `max_concurrency` worker threads share one `httpx.Client` whose connection pool has as many
  connections, so at most `max_concurrency` requests are in flight and connections are reused. Threads
  rather than asyncio so `label_many` can be called from any code, including code already inside an event
  loop.
- Retries: 429, 408, 5xx, timeouts, connection errors and malformed 2xx responses are retried up to
  `max_retries` times (so `max_retries + 1` attempts), waiting a full-jitter exponential backoff
  (uniform in [0, min(backoff_max, backoff_base * 2**(retry - 1))]) or, when the response carries a
  `Retry-After` header (seconds or an HTTP date), at least what the header asks. A `Retry-After` above
  `max(MAX_RETRY_AFTER_S, backoff_max)` fails at once: a server asking for a wait that long (a daily quota)
  is not going to be waited out silently. Any other status (4xx, 3xx) fails at once.
- Malformed responses (a 2xx whose body is not JSON, has no `choices`, no `message`, ...) are retried like a
  5xx: overloaded servers and proxies in front of them do send truncated or error bodies with status 200
  (some gateways report upstream errors as a 200 with an `error` object), and losing a long judging run to
  one such reply costs more than the few seconds of backoff a misconfigured URL takes to fail. The final
  error names what was missing.
- Failure: once any request has failed for good, no new request (and no retry) is sent; requests already
  in flight finish and those that succeed still reach `on_result`; then `JudgeEndpointError` is raised,
  naming the endpoint URL, the HTTP status or the transport error, the number of attempts and how many
  conversations were answered.
- The API key is read from the environment variable named by `api_key_env` when the labeler is built, sent
  only in the `Authorization` header, and kept out of every message this module produces: error text taken
  from a response body is scrubbed of the key (and of words containing its first or last four characters,
  which is how servers print a masked key), no exception is chained to an error object holding the request,
  and nothing is logged here.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import math
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from sparring.errors import UserError

# A server asking for a longer wait than this (unless backoff_max is longer still) fails the run at once.
MAX_RETRY_AFTER_S = 600.0
# Error text quoted from a response body is cut to this many characters.
_SNIPPET = 300


class JudgeEndpointError(UserError):
    """The judge endpoint failed for good (after retries, or at once for a non-retryable status).

    Attributes: `url`, `status` (HTTP status, None for a transport error), `attempts` (of the request that
    failed), `answered` / `total` (conversations answered before stopping), `conversation` (index of the
    conversation whose request failed; None for failures not tied to one)."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        attempts: int = 0,
        answered: int = 0,
        total: int = 0,
        conversation: int | None = None,
    ):
        super().__init__(message)
        self.url = url
        self.status = status
        self.attempts = attempts
        self.answered = answered
        self.total = total
        self.conversation = conversation


@dataclass(frozen=True)
class LabelResult:
    """One conversation's answer.

    `logprobs`: label -> log-prob for the labels found among the first generated token's top log-probs
    (tokens compared after stripping whitespace; the best log-prob when several tokens strip to the same
    label). A label not among them is absent, so the dict may be empty. None when the response carried no
    log-probs at all (the server does not support them, or generated no token).
    `text`: the generated text ("" when the message had no content).
    `top_floor`: the lowest log-prob among the first token's top candidates (a bound on the log-prob of
    any label that is not among them); None without log-probs.
    `finish_reason`: the choice's `finish_reason` as the server gave it ("stop", "length", ...), or None.
    `earlier`: with a `follow_up`, the answers to the same conversation that came before this one, first to
    last (empty when the first answer was final)."""

    logprobs: dict[str, float] | None
    text: str
    top_floor: float | None = None
    finish_reason: str | None = field(default=None, compare=False)  # how it ended, not what it said
    earlier: tuple[LabelResult, ...] = ()


class _Malformed(Exception):
    """A 2xx response that is not a Chat Completions answer; the message says what was missing."""


@dataclass
class _Failure:
    conversation: int
    problem: str
    status: int | None
    attempts: int


# arena_hard's re-ask: (the conversation just answered, its answers so far) -> the next one, or None
FollowUp = Callable[[list[dict], list[LabelResult]], list[dict] | None]

# A worker's request gave up because another request had already failed (not a failure of its own).
_ABANDONED = object()
# A worker thread has exited.
_DONE = object()


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header value asks to wait: a non-negative number of seconds or an HTTP date
    (RFC 9110). None when absent or unparseable; a date in the past gives 0."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # HTTP dates are GMT; parsedate gives a naive datetime for "-0000"
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class ChatLabeler:
    """Send judging conversations to an OpenAI-compatible Chat Completions endpoint; see the module doc.

    Statistics, accumulated over all `label_many` calls: `requests_sent` (HTTP requests, retries included),
    `retries`, `seconds_waited` (backoff waits, summed over the worker threads, so it can exceed the wall
    time), `answers_without_logprobs`."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str | None,
        labels: Sequence[str] = ("A", "B"),
        max_tokens: int = 1,
        top_logprobs: int = 20,
        logprobs: bool = True,
        temperature: float = 0.0,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
    ):
        if not isinstance(base_url, str) or not re.match(r"https?://[^/\s]+", base_url):
            raise UserError(f"judge base_url must be an http:// or https:// URL, got {base_url!r}")
        base_url = base_url.rstrip("/")
        if base_url.endswith("/chat/completions"):
            raise UserError(
                f"judge base_url should be the API root (e.g. http://host:8000/v1), without "
                f"/chat/completions: got {base_url!r}"
            )
        if not isinstance(model, str) or not model:
            raise UserError(f"judge model must be a non-empty string, got {model!r}")
        if isinstance(labels, str) or not labels or not all(isinstance(x, str) and x.strip() for x in labels):
            raise UserError(f"judge labels must be a list of non-blank strings, got {labels!r}")
        if len({x.strip() for x in labels}) != len(labels):
            raise UserError(f"judge labels must be distinct after stripping whitespace, got {list(labels)!r}")
        for name, value, low in (
            ("max_tokens", max_tokens, 1),
            ("top_logprobs", top_logprobs, 0),
            ("max_concurrency", max_concurrency, 1),
            ("max_retries", max_retries, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"judge {name} must be an integer >= {low}, got {value!r}")
        for name, value, positive in (
            ("temperature", temperature, False),
            ("timeout", timeout, True),
            ("backoff_base", backoff_base, False),
            ("backoff_max", backoff_max, False),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
                or (positive and value == 0)
            ):
                raise UserError(
                    f"judge {name} must be a {'positive' if positive else 'non-negative'} number, got {value!r}"
                )
        self._api_key: str | None = None
        if api_key_env is not None:
            if not isinstance(api_key_env, str) or not api_key_env:
                raise UserError(f"judge api_key_env must be the name of an environment variable, got {api_key_env!r}")
            if api_key_env not in os.environ:
                raise UserError(
                    f"judge api_key_env: environment variable {api_key_env} is not set (it should hold "
                    f"the API key; use api_key_env: null for a server without a key)"
                )
            if not os.environ[api_key_env].strip():
                raise UserError(f"judge api_key_env: environment variable {api_key_env} is empty")
            self._api_key = os.environ[api_key_env].strip()
        self.base_url = base_url
        self.url = f"{base_url}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.labels = tuple(x.strip() for x in labels)
        self.max_tokens = max_tokens
        self.top_logprobs = top_logprobs
        self.logprobs = bool(logprobs)
        self.temperature = float(temperature)
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.requests_sent = 0
        self.retries = 0
        self.seconds_waited = 0.0
        self.answers_without_logprobs = 0
        self._stats_lock = threading.Lock()
        self._rng = random.Random()

    def __repr__(self) -> str:  # no key here: the default repr would show it
        return (
            f"ChatLabeler(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
            f"max_concurrency={self.max_concurrency})"
        )

    @property
    def stats(self) -> dict[str, float]:
        with self._stats_lock:
            return {
                "requests_sent": self.requests_sent,
                "retries": self.retries,
                "seconds_waited": self.seconds_waited,
                "answers_without_logprobs": self.answers_without_logprobs,
            }

    # -- the public entry point ------------------------------------------------------------------------------

    def label_many(
        self,
        conversations: list[list[dict]],
        on_result: Callable[[int, LabelResult], None] | None = None,
        progress: bool = False,
        follow_up: FollowUp | None = None,
    ) -> list[LabelResult]:
        """The answer to every conversation, in order. `on_result(i, result)` is called from this (the
        calling) thread as each answer arrives, so the caller can persist it before anything else fails.
        `follow_up(conversation, answers)`, called on a worker thread (so it must not share state unguarded)
        with the conversation just answered and its answers so far (first to last), returns the conversation
        to send next, or None when the last answer is final; only final answers reach `on_result`, carrying
        the others in `earlier`. Once a request has failed for good no follow-up is sent either, and a
        conversation whose follow-up was not sent is not answered.
        Raises JudgeEndpointError (a UserError) when a request fails for good; see the module doc."""
        import httpx
        from tqdm.auto import tqdm

        if not isinstance(conversations, (list, tuple)):
            raise UserError(f"judge conversations must be a list of conversations, got {type(conversations).__name__}")
        # Encoded once up front: a conversation that cannot be sent is the caller's error, found before any
        # request goes out, and retries re-send the same bytes.
        bodies = [self._encode(i, c) for i, c in enumerate(conversations)]
        n = len(bodies)
        results: list[LabelResult | None] = [None] * n
        if n == 0:
            return []

        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        n_workers = min(self.max_concurrency, n)
        client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=n_workers, max_keepalive_connections=n_workers),
        )
        stop = threading.Event()
        next_index = iter(range(n))
        index_lock = threading.Lock()
        outcomes: queue.Queue = queue.Queue()

        def worker() -> None:
            try:
                while not stop.is_set():
                    with index_lock:
                        i = next(next_index, None)
                    if i is None:
                        return
                    try:
                        outcome = self._request(client, i, bodies[i], stop)
                        if follow_up is not None:
                            outcome = self._follow(client, i, conversations[i], outcome, follow_up, stop)
                    except BaseException as e:  # noqa: BLE001  # a bug, not the endpoint: re-raised by the calling thread
                        stop.set()
                        outcomes.put((i, e))
                        return
                    if isinstance(outcome, _Failure):
                        stop.set()  # before the put, so no worker takes a new conversation after it
                    outcomes.put((i, outcome))
            finally:
                outcomes.put((None, _DONE))

        threads = [threading.Thread(target=worker, name=f"judge-http-{k}", daemon=True) for k in range(n_workers)]
        failures: list[_Failure] = []
        crash: BaseException | None = None
        answered = 0
        bar = tqdm(total=n, desc="judge", unit="conv", disable=not progress, dynamic_ncols=True)
        finished = False
        try:
            for t in threads:
                t.start()
            running = n_workers
            while running:
                i, outcome = outcomes.get()
                if outcome is _DONE:
                    running -= 1
                elif outcome is _ABANDONED:
                    pass
                elif isinstance(outcome, _Failure):
                    failures.append(outcome)
                elif isinstance(outcome, BaseException):
                    crash = crash or outcome
                else:
                    results[i] = outcome
                    answered += 1
                    bar.update(1)
                    if on_result is not None and crash is None:
                        try:
                            on_result(i, outcome)
                        except BaseException as e:  # noqa: BLE001  # the caller's: stop sending, re-raise it below
                            stop.set()
                            crash = e
            finished = True
        finally:
            bar.close()
            stop.set()
            if finished:  # every worker has exited
                for t in threads:
                    t.join()
            # else interrupted (Ctrl-C) while waiting: no new request goes out, and closing the client ends
            # the in-flight ones; the daemon workers exit on their own.
            client.close()
        if crash is not None:
            raise crash
        if failures:
            raise self._error(failures, answered, n)
        return results  # type: ignore[return-value]  # every slot is filled when nothing failed

    # -- one request, with retries ---------------------------------------------------------------------------

    def _encode(self, i: int, conversation: Any) -> bytes:
        if (
            not isinstance(conversation, (list, tuple))
            or not conversation
            or not all(isinstance(m, dict) for m in conversation)
        ):
            raise UserError(
                f"judge conversation {i} must be a non-empty list of message dicts "
                f"({{'role': ..., 'content': ...}}), got {type(conversation).__name__}"
            )
        payload = {
            "model": self.model,
            "messages": list(conversation),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.logprobs:  # not asked when the judge reads a written verdict (some APIs refuse it then)
            payload.update(logprobs=True, top_logprobs=self.top_logprobs)
        try:
            return json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise UserError(f"judge conversation {i} cannot be sent as JSON: {e}") from None

    def _request(self, client: Any, i: int, body: bytes, stop: threading.Event) -> LabelResult | _Failure | object:
        import httpx

        attempt = 0
        while True:
            attempt += 1
            with self._stats_lock:
                self.requests_sent += 1
            wait_at_least: float | None = None
            try:
                response = client.post(self.url, content=body)
            except httpx.TimeoutException as e:
                problem, status = f"timed out ({type(e).__name__}, timeout {self.timeout:g} s)", None
            except httpx.TransportError as e:
                problem, status = f"connection error ({type(e).__name__}: {self._redact(str(e))})", None
            else:
                status = response.status_code
                if 200 <= status < 300:
                    try:
                        result = self._parse(response)
                    except _Malformed as e:
                        problem = f"malformed response (HTTP {status}): {e}"
                    else:
                        if self.logprobs and result.logprobs is None:
                            with self._stats_lock:
                                self.answers_without_logprobs += 1
                        return result
                elif status in (408, 429) or status >= 500:
                    problem = f"HTTP {status}{self._error_detail(response)}"
                    wait_at_least = retry_after_seconds(response.headers.get("retry-after"))
                else:
                    hint = ""
                    if status in (401, 403):
                        hint = (
                            f" (check the API key in ${self.api_key_env})"
                            if self.api_key_env
                            else " (the server wants an API key: set judge api_key_env)"
                        )
                    elif 300 <= status < 400:
                        hint = f" (redirect to {response.headers.get('location', '?')}: fix base_url)"
                    return _Failure(i, f"HTTP {status}{self._error_detail(response)}{hint}", status, attempt)
            if attempt > self.max_retries:
                return _Failure(i, problem, status, attempt)
            if stop.is_set():
                return _ABANDONED
            limit = max(MAX_RETRY_AFTER_S, self.backoff_max)
            if wait_at_least is not None and wait_at_least > limit:
                return _Failure(
                    i,
                    f"{problem}, and Retry-After asks to wait {wait_at_least:.0f} s (more than {limit:.0f} s)",
                    status,
                    attempt,
                )
            delay = self._rng.uniform(0.0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))
            if wait_at_least is not None:
                delay = max(delay, wait_at_least)
            started = time.monotonic()
            interrupted = stop.wait(delay)
            with self._stats_lock:
                self.retries += 0 if interrupted else 1
                self.seconds_waited += time.monotonic() - started
            if interrupted:
                return _ABANDONED

    def _follow(
        self, client: Any, i: int, conversation: list[dict], outcome: Any, follow_up: FollowUp, stop: threading.Event
    ) -> LabelResult | _Failure | object:
        """Conversation i's final answer: `outcome` (its first request's), continued while `follow_up` asks."""
        answers: list[LabelResult] = []
        while isinstance(outcome, LabelResult):
            answers.append(outcome)
            conversation = follow_up(conversation, list(answers))
            if conversation is None:
                return dataclasses.replace(outcome, earlier=tuple(answers[:-1]))
            if stop.is_set():  # another request failed for good: nothing new goes out
                return _ABANDONED
            outcome = self._request(client, i, self._encode(i, conversation), stop)
        return outcome  # the follow-up failed, or gave up

    def _parse(self, response: Any) -> LabelResult:
        try:
            data = response.json()
        except (ValueError, UnicodeDecodeError):
            raise _Malformed(f"body is not JSON: {self._snippet(response.text)!r}") from None
        if not isinstance(data, dict):
            raise _Malformed(f"body is JSON {type(data).__name__}, not an object")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            detail = self._error_detail_from(data)
            raise _Malformed(
                f"no 'choices' in the response{detail or ''}"
                if choices is None
                else f"'choices' is {choices!r:.40}, not a non-empty list{detail or ''}"
            )
        choice = choices[0]
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise _Malformed("choices[0] has no 'message' object")
        content = choice["message"].get("content")
        if content is not None and not isinstance(content, str):
            raise _Malformed(f"choices[0].message.content is {type(content).__name__}, not a string")
        found, floor = self._label_logprobs(choice.get("logprobs")) if self.logprobs else (None, None)
        reason = choice.get("finish_reason")
        return LabelResult(
            logprobs=found,
            text=content or "",
            top_floor=floor,
            finish_reason=reason if isinstance(reason, str) else None,
        )

    def _label_logprobs(self, logprobs: Any) -> tuple[dict[str, float] | None, float | None]:
        """(label -> best log-prob among the first token's candidates, the lowest candidate log-prob);
        (None, None) when there are no log-probs."""
        if logprobs is None:
            return None, None
        if not isinstance(logprobs, dict):
            raise _Malformed(f"choices[0].logprobs is {type(logprobs).__name__}, not an object")
        tokens = logprobs.get("content")
        if not tokens:  # null or [] (no token generated): no log-probs to give
            return None, None
        first = tokens[0] if isinstance(tokens, list) else None
        if not isinstance(first, dict):
            raise _Malformed("choices[0].logprobs.content[0] is not an object")
        top = first.get("top_logprobs") or []
        if not isinstance(top, list):
            raise _Malformed("choices[0].logprobs.content[0].top_logprobs is not a list")
        found: dict[str, float] = {}
        floor = math.inf
        # The sampled token is a candidate too: with top_logprobs=0 it is the only one.
        for k, entry in enumerate([first, *top]):
            where = "content[0]" if k == 0 else f"content[0].top_logprobs[{k - 1}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
                raise _Malformed(f"choices[0].logprobs.{where} has no string 'token'")
            lp = entry.get("logprob")
            if isinstance(lp, bool) or not isinstance(lp, (int, float)) or math.isnan(lp):
                raise _Malformed(f"choices[0].logprobs.{where} has no numeric 'logprob'")
            floor = min(floor, float(lp))
            label = entry["token"].strip()
            if label in self.labels and (label not in found or lp > found[label]):
                found[label] = float(lp)
        return found, floor

    # -- messages --------------------------------------------------------------------------------------------

    def _error(self, failures: list[_Failure], answered: int, total: int) -> JudgeEndpointError:
        first = failures[0]
        others = f"; {len(failures) - 1} other request(s) failed too" if len(failures) > 1 else ""
        return JudgeEndpointError(
            f"judge endpoint {self.url}: {first.problem} after {first.attempts} attempt(s) for conversation "
            f"{first.conversation}{others}; {answered} of {total} conversations were answered before stopping",
            url=self.url,
            status=first.status,
            attempts=first.attempts,
            answered=answered,
            total=total,
            conversation=first.conversation,
        )

    def _error_detail(self, response: Any) -> str:
        """': <server's error message>' from an error response's body, scrubbed of the key; '' if none."""
        try:
            data = response.json()
        except (ValueError, UnicodeDecodeError):
            text = self._snippet(response.text)
            return f": {text}" if text else ""
        return self._error_detail_from(data) or (f": {self._snippet(json.dumps(data))}" if data else "")

    def _error_detail_from(self, data: Any) -> str | None:
        # OpenAI-style {"error": {"message": ...}} and vLLM/FastAPI-style {"message": ...} / {"detail": ...}
        err = data.get("error") if isinstance(data, dict) else None
        msg = err.get("message") if isinstance(err, dict) else err
        if msg is None and isinstance(data, dict):
            msg = data.get("message", data.get("detail"))
        return f": {self._snippet(str(msg))}" if msg not in (None, "") else None

    def _snippet(self, text: str) -> str:
        text = " ".join(self._redact(text).split())
        return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"

    def _redact(self, text: str) -> str:
        """`text` without the API key: the key itself, and any word containing its first or last four
        characters (servers echo a masked key such as 'sk-ab***wxyz')."""
        key = self._api_key
        if not key:
            return text
        text = text.replace(key, "<redacted>")
        if len(key) >= 8:
            marks = (key[:4], key[-4:])
            text = re.sub(r"\S+", lambda m: "<redacted>" if any(s in m.group(0) for s in marks) else m.group(0), text)
        return text
