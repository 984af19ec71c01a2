"""`python`: a snippet runs in the code sandbox, and what it prints comes back.

    await Python().run("print(347*28)")   # ToolResult(text="9716\n", ok=True, cpu_s=0.006, ...)

Each call is a process of its own, forked in the sandbox (verify/sandbox.py:
namespaces, seccomp, Landlock, rlimits), with the tool's time limit and a cap
on what it may print. Its CPU time is the sample's process and the sandbox
server's as the kernel counted them. With the tiny core's tag syntax the
argument is an expression, and its value is printed (`print(ARGUMENT)`); with
a fenced block it is a program.
"""

from __future__ import annotations

import asyncio

from thinkscale.tools.base import Tool, ToolResult


class Python(Tool):
    name = "python"
    description = "Run a Python program in a sandbox (no network, no files kept). Returns what it prints."

    def __init__(self, timeout_s: float = 2.0, max_output_chars: int = 200, memory_mb: int = 512,
                 expression: bool = False) -> None:
        """`expression`: the argument is one expression whose value is printed (the tiny core's calls)."""
        super().__init__(timeout_s, max_output_chars)
        self.memory_mb = memory_mb
        self.expression = expression
        self.argument = "expression" if expression else "code"
        self._sandbox = None

    def _run(self, code: str) -> ToolResult:
        from thinkscale.verify.sandbox import Limits, Sandbox

        if self._sandbox is None:
            self._sandbox = Sandbox(workers=1)
        run = self._sandbox.run_program(code, Limits(timeout_s=self.timeout_s, memory_mb=self.memory_mb),
                                        max_output_chars=self.max_output_chars)
        if run.error is not None:
            return ToolResult.error(run.error, run.cpu_s, run.wall_s)
        return ToolResult(run.output, True, run.cpu_s, run.wall_s)

    async def run(self, argument: str) -> ToolResult:
        code = f"print({argument.strip()})" if self.expression else argument
        try:
            return await asyncio.to_thread(self._run, code)
        except Exception as e:  # the sandbox could not start: the policy reads why, the search goes on
            return ToolResult.error(f"the sandbox failed: {e}")

    def worst_cpu_s(self) -> float:
        # The sample's CPU limit is whole seconds (RLIMIT_CPU), and the server and the fork cost a little.
        return float(max(1, -(-self.timeout_s // 1))) + 0.1

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
