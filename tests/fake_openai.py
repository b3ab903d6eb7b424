"""A fake OpenAI-compatible Chat Completions endpoint for the judge tests (an http.server in a daemon thread,
on an ephemeral port of 127.0.0.1; nothing leaves the machine).

    with FakeOpenAI(lambda body: "My verdict: [[A>B]]") as srv:
        judge = build_judge({"name": "openai", "model": "m", "base_url": srv.url})
        ...
        assert srv.requests == 2

`answer(body)` is called once per request with the request's JSON body (a dict) and decides the reply:
- a str: the assistant message's content, finished with `finish_reason: "stop"`;
- a dict: the whole `choices[0]` object, as is (log-probs, another finish reason);
- an int: an HTTP error status, sent with an OpenAI-style error body (failure injection).
It runs on the server's handler threads (one per request), so it may block to delay its reply; whatever
it shares between requests needs a lock, or `srv.lock`.

The server records every request: `bodies` (JSON bodies, in arrival order) and `headers` (their headers,
as dicts); `requests` is how many have arrived. The handler reads the body itself from `Content-Length`
(tests/test_judge_pay_once.py wraps the handler class, `srv.httpd.RequestHandlerClass`, and relies on it)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = Callable[[dict], "str | dict | int"]


def judging_text(body: dict) -> str:
    """The conversation's first user turn: the judging request, however many turns follow it (a re-ask)."""
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def last_text(body: dict) -> str:
    """The conversation's last turn: what the judge is being asked right now."""
    return body["messages"][-1]["content"]


class FakeOpenAI:
    """A Chat Completions endpoint at `url` (`.../v1`) answering by `answer`; see the module docstring."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers.items()))
                reply = server.answer(body)
                status = 200
                if isinstance(reply, int):
                    status, payload = reply, {"error": {"message": f"injected failure (HTTP {reply})"}}
                else:
                    if isinstance(reply, str):
                        reply = {"message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                    payload = {"choices": [{"index": 0, **reply}]}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def requests(self) -> int:
        with self.lock:
            return len(self.bodies)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
