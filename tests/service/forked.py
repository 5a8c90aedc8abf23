"""Service processes forked from one warm parent, so a stack starts in about a second instead of five.

A service test starts the API, a worker and the webhook deliverer as real processes, often several
times per test. Each one, started as `python cli.py worker`, spends most of its start importing torch,
diffusers and the app (about four seconds of CPU on two cores): the largest cost of the stack tier.
Here one parent process per test session imports those modules once and forks each service process
from itself; the child sets the environment, folder and log it was given and runs `cli.main` as the
command line would. It is still a process of its own (its pid, signals, exit status, memory), so kills,
restarts and crashes are tested as before; only the imports are shared.

The parent is single-threaded (a fork copies only the calling thread, so no lock can be held by another)
and never touches torch beyond importing it. A command whose environment changes how torch or Triton
behave at import time is run as a plain subprocess instead (`Launcher.popen`).

Protocol, one JSON line per request on a Unix socket: `{"run": {argv, env, cwd, log[, err]}}` answers
`{"pid": n}`; `{"status": pid}` answers `{"returncode": code or null}`.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "cli.py")]  # the `onediffusion` command as a plain subprocess
# Set at import by torch, Triton or the BLAS libraries: a child with other values is not forked.
IMPORT_TIME_ENV = ("TORCH", "PYTORCH", "TRITON", "CUDA", "OMP_", "MKL_", "OPENBLAS", "LD_")
PRELOAD = ("torch", "diffusers", "transformers", "model.pipeline", "worker.main", "app.main", "cli")


# ---- the parent ---------------------------------------------------------------------------------------------
def serve(path: str) -> None:
    for name in PRELOAD:
        __import__(name)
    import cli

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    ended: dict[int, int] = {}
    while True:
        conn, _ = listener.accept()
        with conn, conn.makefile("rwb") as stream:
            line = stream.readline()
            if not line:
                continue
            request = json.loads(line)
            _reap(ended)
            if "run" in request:
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    stream.close()
                    conn.close()
                    _child(cli, **request["run"])  # never returns
                answer = {"pid": pid}
            else:
                pid = int(request["status"])
                answer = {"returncode": ended.get(pid)}
            stream.write(json.dumps(answer).encode() + b"\n")
            stream.flush()


def _reap(ended: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        ended[pid] = os.waitstatus_to_exitcode(status)


def _child(cli, argv: list[str], env: dict, cwd: str, log: str, err: Optional[str] = None) -> None:
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(env)
        from core.settings import get_settings

        get_settings.cache_clear()  # read from this environment, as a fresh process would
        os.chdir(cwd)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if err else out, 2)
        # the parent's streams were made for its pipe; the child's write through at once, as with
        # PYTHONUNBUFFERED, so a test reads a log line as soon as it is written
        sys.stdout = io.TextIOWrapper(open(1, "wb", buffering=0, closefd=False), encoding="utf-8",
                                      line_buffering=True, write_through=True)
        sys.stderr = io.TextIOWrapper(open(2, "wb", buffering=0, closefd=False), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True, write_through=True)
        sys.argv = [str(ROOT / "cli.py"), *argv]
        try:
            cli.main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
    finally:
        try:
            import logging

            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# ---- the test side ------------------------------------------------------------------------------------------
class ForkedProcess:
    """What the tests use of subprocess.Popen, for a process the parent forked."""

    def __init__(self, launcher: "Launcher", pid: int):
        self.launcher = launcher
        self.pid = pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            self.returncode = self.launcher.ask({"status": self.pid})["returncode"]
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"forked pid {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Launcher:
    """Starts `cli.py` commands: forked from the warm parent when the environment allows it, else as a
    plain subprocess. One per test session (each pytest worker has its own)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="forked-")
        self.path = os.path.join(self.dir, "parent.sock")
        self.parent: Optional[subprocess.Popen] = None
        self.base_env = dict(os.environ)

    def _start_parent(self) -> None:
        self.parent = subprocess.Popen([sys.executable, "-m", "tests.service.forked", self.path], cwd=ROOT,
                                       stdout=subprocess.PIPE, text=True, env={**self.base_env, "PYTHONPATH": str(ROOT)})
        line = self.parent.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the warm parent did not start: {line!r}")

    def ask(self, request: dict) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(self.path)
            conn.sendall(json.dumps(request).encode() + b"\n")
            with conn.makefile("rb") as stream:
                return json.loads(stream.readline())

    def forkable(self, env: dict) -> bool:
        def import_time(environment: dict) -> dict:
            return {k: v for k, v in environment.items() if k.startswith(IMPORT_TIME_ENV)}

        return import_time(env) == import_time(self.base_env) and os.environ.get("TEST_FORKED", "1") != "0"

    def popen(self, argv: list[str], env: dict, cwd: Path, log: Path):
        """`python cli.py *argv` with `env` in `cwd`, stdout and stderr appended to `log`."""
        if not self.forkable(env):
            with open(log, "ab") as out:
                return subprocess.Popen(CLI + list(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        return self._fork(argv, env, cwd, log)

    def run(self, argv: list[str], env: dict, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
        """`python cli.py *argv` to its end, its stdout and stderr apart (what subprocess.run answers)."""
        if not self.forkable(env):
            return subprocess.run(CLI + list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        with tempfile.TemporaryDirectory(dir=self.dir) as folder:
            out, err = Path(folder) / "out", Path(folder) / "err"
            process = self._fork(argv, env, cwd, out, err)
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
            read = lambda path: path.read_text(errors="replace") if path.exists() else ""  # noqa: E731
            return subprocess.CompletedProcess(list(argv), code, read(out), read(err))

    def _fork(self, argv: list[str], env: dict, cwd: Path, log: Path, err: Optional[Path] = None) -> ForkedProcess:
        """Have the warm parent (started on first use, or again if it died) fork the command."""
        if self.parent is None or self.parent.poll() is not None:
            self._start_parent()
        request = {"argv": list(argv), "env": env, "cwd": str(cwd), "log": str(log), **({"err": str(err)} if err else {})}
        return ForkedProcess(self, self.ask({"run": request})["pid"])

    def close(self) -> None:
        if self.parent is not None and self.parent.poll() is None:
            self.parent.kill()
            self.parent.wait(10)


if __name__ == "__main__":
    serve(sys.argv[1])
