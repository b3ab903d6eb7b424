"""ChatLabeler against a local Chat Completions–shaped HTTP server (http.server in a thread, ephemeral port).

Each test gives the server a `behave(req)` function deciding the reply to each request; the server records
every request (arrival time, path, headers, body, which conversation it was and how many times that
conversation has been seen) and the peak number of requests it was handling at once."""

from __future__ import annotations

import email.utils
import json
import logging
import secrets
import socket
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sparring.errors import UserError
from sparring.judges.openai_client import ChatLabeler, JudgeEndpointError, LabelResult, retry_after_seconds

FAST = {"backoff_base": 0.002, "backoff_max": 0.01}  # keeps retries quick in tests


def completion(text="A", top=None, *, logprobs=True):
    """A Chat Completions body whose first token is `text`, with `top` (token -> logprob) as its top log-probs."""
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
    if logprobs:
        top = {"A": -0.1, "B": -2.4} if top is None else top
        first = {
            "token": text,
            "logprob": top.get(text, -5.0),
            "bytes": list(text.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top.items()],
        }
        choice["logprobs"] = {"content": [first]}
    else:
        choice["logprobs"] = None
    return {"id": "cmpl-1", "object": "chat.completion", "model": "judge", "choices": [choice]}


def convs(n):
    return [
        [{"role": "system", "content": "Answer A or B."}, {"role": "user", "content": f"conv {i}"}] for i in range(n)
    ]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out and hung up makes the late reply fail: expected here, not noise


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server: the client reuses connections

    def do_POST(self):
        app = self.server.app
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            body = json.loads(raw)
            conv = int(body["messages"][-1]["content"].split()[-1])
        except (ValueError, KeyError, IndexError, TypeError):
            body, conv = None, None
        with app.lock:
            app.active += 1
            app.peak = max(app.peak, app.active)
            app.seen[conv] = app.seen.get(conv, 0) + 1
            req = {
                "t": time.monotonic(),
                "path": self.path,
                "headers": dict(self.headers.items()),
                "raw": raw,
                "body": body,
                "conv": conv,
                "n": app.seen[conv],
            }
            app.requests.append(req)
        try:
            status, headers, payload = app.behave(req)
        finally:
            # before the reply goes out, so a worker's next request never overlaps its previous one here
            with app.lock:
                app.active -= 1
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (timeout) and closed the connection

    def log_message(self, *args):
        pass


class _App:
    def __init__(self, behave):
        self.behave = behave
        self.lock = threading.Lock()
        self.active = self.peak = 0
        self.seen: dict = {}
        self.requests: list[dict] = []
        self.release = threading.Event()  # set at teardown: ends the handlers' sleeps

    def sleep(self, seconds):
        self.release.wait(seconds)


@pytest.fixture
def serve():
    started = []

    def start(behave):
        app = _App(behave)
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.app = app
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        started.append((app, httpd, thread))
        app.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        return app

    yield start
    for app, httpd, thread in started:
        app.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def labeler(app, **kw):
    args = {
        "base_url": app.base_url,
        "model": "judge",
        "api_key_env": None,
        "max_concurrency": 2,
        "timeout": 5.0,
        "max_retries": 3,
        **FAST,
    }
    return ChatLabeler(**{**args, **kw})


def test_soft_labels_and_request(serve):
    tops = {
        0: {" A": -0.9, "A": -0.2, "B": -1.7, "C": -3.0, "a": -0.05},  # " A" and "A" both strip to A
        1: {"A": -0.01, "The": -4.6},
    }  # B is not among the top log-probs
    app = serve(lambda req: (200, {}, completion("A", tops[req["conv"]])))
    lab = labeler(app, top_logprobs=5, max_concurrency=2)
    seen = []
    out = lab.label_many(convs(2), on_result=lambda i, r: seen.append((i, r)))

    # best of " A"/"A"; "a" is not a label; top_floor is the lowest candidate (a bound for absent labels)
    assert out[0] == LabelResult(logprobs={"A": -0.2, "B": -1.7}, text="A", top_floor=-3.0)
    assert out[1] == LabelResult(logprobs={"A": -0.01}, text="A", top_floor=-4.6)  # a missing label is absent
    assert sorted(seen, key=lambda x: x[0]) == list(enumerate(out))
    assert lab.stats == {"requests_sent": 2, "retries": 0, "seconds_waited": 0.0, "answers_without_logprobs": 0}
    req = app.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert "authorization" not in {k.lower() for k in req["headers"]}  # api_key_env=None: no key sent
    body = req["body"]
    assert {k: body[k] for k in ("model", "max_tokens", "temperature", "logprobs", "top_logprobs")} == {
        "model": "judge",
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": True,
        "top_logprobs": 5,
    }
    assert body["messages"] == convs(2)[req["conv"]]


def test_retry_after_is_honoured(serve):
    app = serve(
        lambda req: (
            (429, {"Retry-After": "1"}, {"error": {"message": "slow down"}})
            if req["n"] == 1
            else (200, {}, completion("B"))
        )
    )
    lab = labeler(app, max_concurrency=1)
    [res] = lab.label_many(convs(1))
    assert res.text == "B" and res.logprobs == {"A": -0.1, "B": -2.4}
    first, second = app.requests
    assert second["t"] - first["t"] >= 1.0  # the header asked for 1 s; backoff alone would wait ≤ 10 ms
    assert lab.requests_sent == 2 and lab.retries == 1 and lab.seconds_waited >= 1.0


def test_retry_after_header_values():
    now = 1_700_000_000.0
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(" 0.5 ") == 0.5
    assert retry_after_seconds(email.utils.formatdate(now + 5, usegmt=True), now=now) == pytest.approx(5.0)
    assert retry_after_seconds(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0  # in the past
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-1") is None
    assert retry_after_seconds(None) is None


def test_500_until_retries_run_out(serve):
    app = serve(
        lambda req: (
            (500, {}, {"error": {"message": "engine overloaded"}}) if req["conv"] == 3 else (200, {}, completion("A"))
        )
    )
    lab = labeler(app, max_concurrency=1, max_retries=3)
    seen = []
    with pytest.raises(JudgeEndpointError) as err:
        lab.label_many(convs(6), on_result=lambda i, r: seen.append(i))
    e = err.value
    msg = str(e)
    assert isinstance(e, UserError)
    assert f"{app.base_url}/chat/completions" in msg and "HTTP 500" in msg and "engine overloaded" in msg
    assert "4 attempt(s)" in msg and "3 of 6 conversations were answered" in msg
    assert (e.status, e.attempts, e.answered, e.total, e.conversation) == (500, 4, 3, 6, 3)
    assert seen == [0, 1, 2]  # each answered conversation reached on_result before the error
    assert app.seen == {0: 1, 1: 1, 2: 1, 3: 4}  # nothing sent after the last retry of conversation 3
    assert lab.retries == 3 and lab.requests_sent == 7


def test_in_flight_requests_finish_after_a_failure(serve):
    conv1_arrived, conv0_failed = threading.Event(), threading.Event()

    def behave(req):
        if req["conv"] == 0:  # fails only once conversation 1 is in flight
            conv1_arrived.wait(5)
            conv0_failed.set()
            return 500, {}, {"error": {"message": "boom"}}
        conv1_arrived.set()
        conv0_failed.wait(5)
        app.sleep(0.3)  # lets the client register the failure before this answer arrives
        return 200, {}, completion("B")

    app = serve(behave)
    lab = labeler(app, max_concurrency=2, max_retries=0)
    seen = []
    with pytest.raises(JudgeEndpointError) as err:
        lab.label_many(convs(6), on_result=lambda i, r: seen.append((i, r.text)))
    assert seen == [(1, "B")]  # the in-flight request's answer was still delivered
    assert err.value.answered == 1 and "1 of 6" in str(err.value)
    assert set(app.seen) == {0, 1}  # no new conversation was sent after the failure


def test_timeout_is_retried_then_fails(serve):
    def behave(req):
        if req["conv"] == 0 and req["n"] == 1 or req["conv"] == 1:
            app.sleep(2.0)  # longer than the client's timeout
        return 200, {}, completion("A")

    app = serve(behave)
    lab = labeler(app, timeout=0.2, max_concurrency=1, max_retries=2)
    # conversation 0: times out once, then answers; conversation 1: times out on every attempt
    seen = []
    with pytest.raises(JudgeEndpointError) as err:
        lab.label_many(convs(2), on_result=lambda i, r: seen.append(i))
    msg = str(err.value)
    assert "timed out" in msg and "timeout 0.2 s" in msg and "3 attempt(s)" in msg and "1 of 2" in msg
    assert err.value.status is None and err.value.attempts == 3
    assert seen == [0]
    assert app.seen == {0: 2, 1: 3}


def test_connection_error_is_retried_then_fails():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lab = ChatLabeler(base_url=f"http://127.0.0.1:{port}/v1", model="judge", api_key_env=None, max_retries=2, **FAST)
    with pytest.raises(JudgeEndpointError) as err:
        lab.label_many(convs(1))
    msg = str(err.value)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in msg and "connection error" in msg
    assert err.value.attempts == 3 and lab.requests_sent == 3


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        (b"<html>502 Bad Gateway</html>", "body is not JSON: '<html>502 Bad Gateway</html>'"),
        ({"object": "chat.completion"}, "no 'choices' in the response"),
        ({"error": {"message": "upstream died"}}, "no 'choices' in the response: upstream died"),
        ({"choices": []}, "'choices' is [], not a non-empty list"),
        ({"choices": [{"index": 0}]}, "choices[0] has no 'message' object"),
    ],
)
def test_malformed_response_is_retried_then_fails(serve, payload, expect):
    app = serve(lambda req: (200, {}, payload))
    lab = labeler(app, max_concurrency=1, max_retries=2)
    with pytest.raises(JudgeEndpointError) as err:
        lab.label_many(convs(1))
    msg = str(err.value)
    assert "malformed response (HTTP 200)" in msg and expect in msg and app.base_url in msg
    assert err.value.attempts == 3 and app.seen == {0: 3}  # documented: retried like a 5xx


def test_malformed_response_once_then_success(serve):
    app = serve(lambda req: (200, {}, b'{"choices": [') if req["n"] == 1 else (200, {}, completion("A")))
    lab = labeler(app, max_concurrency=1)
    [res] = lab.label_many(convs(1))
    assert res.text == "A" and lab.retries == 1


def test_no_logprobs_gives_text(serve):
    def behave(req):
        body = completion("B", logprobs=False)
        if req["conv"] == 1:
            del body["choices"][0]["logprobs"]  # some servers omit the key rather than sending null
        return 200, {}, body

    app = serve(behave)
    lab = labeler(app)
    out = lab.label_many(convs(2))
    assert out == [LabelResult(logprobs=None, text="B")] * 2
    assert lab.answers_without_logprobs == 2


def test_other_4xx_fails_at_once(serve):
    app = serve(lambda req: (404, {}, {"error": {"message": "The model `judge` does not exist."}}))
    lab = labeler(app, max_concurrency=1, max_retries=5)
    with pytest.raises(JudgeEndpointError) as err:
        lab.label_many(convs(3))
    msg = str(err.value)
    assert "HTTP 404: The model `judge` does not exist." in msg and "1 attempt(s)" in msg and "0 of 3" in msg
    assert app.seen == {0: 1} and lab.retries == 0


def test_concurrency_is_bounded(serve):
    def behave(req):
        app.sleep(0.05)
        return 200, {}, completion("A")

    app = serve(behave)
    lab = labeler(app, max_concurrency=3)
    out = lab.label_many(convs(15))
    assert len(out) == 15 and all(r.logprobs == {"A": -0.1, "B": -2.4} for r in out)
    assert app.peak <= 3
    assert app.peak == 3  # and the bound is actually used: three requests were in flight together


def test_on_result_error_stops_and_propagates(serve):
    app = serve(lambda req: (200, {}, completion("A")))
    lab = labeler(app, max_concurrency=1)

    def store(i, r):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        lab.label_many(convs(5), on_result=store)
    # conversation 1 may already have been in flight when on_result(0) raised; nothing was sent after it
    assert app.seen in ({0: 1}, {0: 1, 1: 1})


def test_api_key_never_leaks(serve, monkeypatch, capsys, caplog):
    key = f"sk-sparring-{secrets.token_hex(12)}-QzXw"  # a tail that cannot turn up in ports or progress output
    masked = key[:5] + "*" * 10 + key[-4:]  # how OpenAI-style servers print a wrong key
    monkeypatch.setenv("SPARRING_TEST_JUDGE_KEY", key)
    caplog.set_level(logging.DEBUG)  # httpx/httpcore debug logs too

    def behave(req):
        if req["conv"] == 1:  # a server echoing the key in error bodies must not make us print it
            return 401, {}, {"error": {"message": f"Incorrect API key provided: {masked}. Sent: {key}"}}
        if req["conv"] == 2:
            return 503, {"Retry-After": "0"}, f"upstream error for Bearer {key}".encode()
        return 200, {}, completion("A")

    app = serve(behave)
    lab = labeler(app, api_key_env="SPARRING_TEST_JUDGE_KEY", max_concurrency=1, max_retries=1)
    texts = [repr(lab), str(lab.stats)]
    assert lab.label_many([convs(3)[0]], progress=True)[0].text == "A"  # a succeeding case
    for bad in (1, 2):  # a non-retryable failure and one after retries
        with pytest.raises(JudgeEndpointError) as err:
            lab.label_many([convs(3)[bad]], progress=True)
        e = err.value
        texts += [str(e), repr(e.args), "".join(traceback.format_exception(e))]
    assert "HTTP 401" in texts[2] and "check the API key in $SPARRING_TEST_JUDGE_KEY" in texts[2]
    assert "HTTP 503" in texts[5]
    out = capsys.readouterr()
    texts += [out.out, out.err, caplog.text]
    for text in texts:
        assert key not in text
        assert key[-4:] not in text and masked not in text
    assert app.requests and {r["conv"] for r in app.requests} == {0, 1, 2}
    for r in app.requests:  # sent in the Authorization header and nowhere else
        auth = [v for k, v in r["headers"].items() if k.lower() == "authorization"]
        assert auth == [f"Bearer {key}"]
        others = [v for k, v in r["headers"].items() if k.lower() != "authorization"]
        assert not any(key in v for v in others)
        assert key not in r["path"] and key.encode() not in r["raw"]


def test_bad_configuration(monkeypatch):
    monkeypatch.delenv("SPARRING_NO_SUCH_KEY", raising=False)
    with pytest.raises(UserError, match="environment variable SPARRING_NO_SUCH_KEY is not set"):
        ChatLabeler(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="SPARRING_NO_SUCH_KEY")
    monkeypatch.setenv("SPARRING_EMPTY_KEY", " ")
    with pytest.raises(UserError, match="SPARRING_EMPTY_KEY is empty"):
        ChatLabeler(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="SPARRING_EMPTY_KEY")
    for kw, match in (
        ({"max_concurrency": 0}, "max_concurrency must be an integer >= 1"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"base_url": "127.0.0.1:8000/v1"}, "http:// or https:// URL"),
        ({"base_url": "http://h/v1/chat/completions"}, "without /chat/completions"),
        ({"labels": ("A", " A")}, "distinct"),
    ):
        with pytest.raises(UserError, match=match):
            ChatLabeler(**{"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": None, **kw})
    lab = ChatLabeler(base_url="http://127.0.0.1:1/v1", model="m", api_key_env=None)
    with pytest.raises(UserError, match="conversation 1 must be a non-empty list of message dicts"):
        lab.label_many([convs(1)[0], "not a conversation"])
    with pytest.raises(UserError, match="conversation 0 cannot be sent as JSON"):
        lab.label_many([[{"role": "user", "content": object()}]])
    assert lab.requests_sent == 0


def test_retry_after_too_long_fails_at_once(serve):
    app = serve(lambda req: (429, {"Retry-After": "86400"}, {"error": {"message": "daily quota exhausted"}}))
    lab = labeler(app, max_concurrency=1, max_retries=5)
    with pytest.raises(JudgeEndpointError) as err:
        lab.label_many(convs(1))
    msg = str(err.value)
    assert "HTTP 429: daily quota exhausted" in msg and "Retry-After asks to wait 86400 s" in msg
    assert err.value.attempts == 1 and app.seen == {0: 1}
