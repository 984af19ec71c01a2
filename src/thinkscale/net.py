"""Starting a local server and waiting for it: what tests, benchmarks and the GGUF tool share.

Servers that thinkscale starts (llama.cpp, vLLM, the test servers) bind to
127.0.0.1 on a free port; `wait_until_serving` polls until one lists a model
and, if it dies or hangs, says why with the end of its log.
"""

from __future__ import annotations

import time
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(base_url: str, process: Any, timeout_s: float, name: str, log: Any) -> None:
    """Poll `base_url`/models until the server started as `process` lists a model.

    RuntimeError, with the end of the server's output (the binary file `log`
    it writes to), if it exits first or does not answer within `timeout_s`.
    """

    def tail() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")[-3000:]

    import json
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail()}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as answer:
                if json.load(answer)["data"]:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer on {base_url} within {timeout_s:g}s:\n{tail()}")
        time.sleep(0.3)


def stop_server(process: Any, timeout_s: float = 10.0) -> None:
    """SIGTERM (a server finishes what is in flight and exits), then SIGKILL if it has not within `timeout_s`."""
    import subprocess

    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
