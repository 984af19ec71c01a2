"""The OpenAI-compatible reasoning server: any model behind it thinks as hard as a request asks.

    thinkscale serve                      # the tiny arithmetic core on 127.0.0.1:8000, offline

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="beam_search:arithmetic", reasoning_effort="high",
                                   messages=[{"role": "user", "content": "(3+5)*(7-2)="}])

config.py: what it serves and what a request may spend; plan.py: a request
turned into a strategy, its settings, scorer, budget and seed; events.py: the
search run with its events forwarded as they happen; shapes.py: OpenAI's
response bodies and stream chunks; app.py: the endpoints; server.py: uvicorn.
docs/serve.md has the details.
"""

from thinkscale.serve.app import create_app
from thinkscale.serve.config import ServeConfig, load_serve_config

__all__ = ["ServeConfig", "create_app", "load_serve_config"]
