"""Run `python -m attnbench ...` commands without paying for an interpreter and torch import each time.

A server process imports torch and the attnbench command line once (nothing else: no torch op runs in it, so
a forked child starts with a clean thread pool), then, for each command it is sent, forks a child that runs
`python -m attnbench ARGS` as the interpreter would (runpy, `__main__`), in the command's folder, with its
standard output and error in a file and its exit status as the command's. What a command does after start-up
is exactly what it does from a shell; only the import is shared.

    with CommandServer(env, cwd) as server:
        code, output = server.run(["run", "suites/smoke.yaml"], cwd, timeout=300)

The protocol is one JSON line each way: {"argv", "cwd", "out"} in, {"pid"} then {"code"} out.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

SERVER = r"""
import json, os, runpy, sys, traceback
import torch  # noqa: F401  (the shared import)
import attnbench.cli  # noqa: F401

def child(request):
    os.chdir(request["cwd"])
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    sys.argv = ["attnbench", *request["argv"]]
    sys.path[0] = request["cwd"]  # as `python -m` puts the working folder first
    code = 0
    try:
        runpy.run_module("attnbench", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

if __name__ == "__main__":
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            child(request)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class CommandServer:
    def __init__(self, env: dict[str, str], cwd: Path):
        self.script = Path(tempfile.mkdtemp()) / "attnbench_command_server.py"
        self.script.write_text(SERVER)
        self.proc = subprocess.Popen(
            [sys.executable, str(self.script)],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __enter__(self) -> CommandServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self, timeout: float) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the command server exited (code {self.proc.poll()})")
        return json.loads(line)

    def run(self, argv: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
        """(exit code, standard output and error) of `python -m attnbench *argv` run in `cwd`; a command that runs
        past `timeout` seconds is killed (exit code -9, as subprocess reports a SIGKILL)."""
        with tempfile.NamedTemporaryFile(suffix=".out", delete=False) as f:
            out = Path(f.name)
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "out": str(out)}) + "\n")
        self.proc.stdin.flush()
        pid = self._read(30)["pid"]
        reply = self._read(timeout)
        if reply is None:
            os.kill(pid, signal.SIGKILL)
            reply = self._read(30)
        output = out.read_text(errors="replace")
        out.unlink()
        return reply["code"], output

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.script.exists():
            self.script.unlink()
            self.script.parent.rmdir()
