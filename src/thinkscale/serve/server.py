"""Running the app under uvicorn: where it listens, and how it stops.

On SIGTERM or Ctrl-C uvicorn stops accepting connections, lets the requests in
flight finish for up to `shutdown_timeout_s`, cancels what is left (their
searches stop) and then closes the models. Tests run the same `uvicorn.Server`
in a thread of their own (signals are only caught in the main thread).
"""

from __future__ import annotations

import uvicorn

from thinkscale.serve.app import create_app
from thinkscale.serve.auth import Keys, check_exposure
from thinkscale.serve.config import ServeConfig


def build_server(config: ServeConfig, keys: list[str], log_level: str = "info") -> uvicorn.Server:
    """A uvicorn Server for `config` (its host and port), refusing an open server off the loopback interface."""
    guard = Keys(keys)
    check_exposure(config.host, guard)
    app = create_app(config, guard)
    return uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                                         timeout_graceful_shutdown=config.shutdown_timeout_s,
                                         limit_concurrency=None, server_header=False))


def serve(config: ServeConfig, keys: list[str], log_level: str = "info") -> None:
    """Serve until SIGTERM or Ctrl-C."""
    build_server(config, keys, log_level).run()
