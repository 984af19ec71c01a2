"""The checking process behind `thinkscale.verify.math.MathChecker` (not for direct use).

Protocol, one JSON object per line: it writes {"ready": true} once math-verify
is imported, then answers each {"given", "reference"} read from stdin with
{"equal", "reason"}, until stdin closes (its parent is done or gone).
"""

from __future__ import annotations

import json
import logging
import os
import sys


def main() -> None:
    # Replies go to a private copy of stdout; anything a library prints goes to
    # stderr, so a stray print can never be taken for a reply.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    # math-verify warns once that its own (signal-based) timeouts are off: the
    # parent enforces the limit by killing this process.
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    from thinkscale.verify.math import check_in_process

    check_in_process("1", "1")  # import math-verify and sympy before saying ready
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            equal, reason = check_in_process(request["given"], request["reference"])
        except Exception as e:  # noqa: BLE001 - a checker error is a verdict, not a crash
            equal, reason = False, f"checker error: {type(e).__name__}: {e}"[:500]
        replies.write(json.dumps({"equal": equal, "reason": reason}) + "\n")


if __name__ == "__main__":
    main()
