"""`mashup serve`: refuses to share a writable dashboard beyond loopback, and starts a real
Streamlit server when asked safely (checked by its health endpoint, then stopped)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from mashup_core import access
from mashup_core.cli.serve import ServeError, serve_command


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (access.TOKEN_ENV, access.READ_ONLY_ENV)}
    return {**env, **extra}


def _mashup(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mashup_core.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_non_loopback_without_read_only_or_token_is_refused(tmp_path):
    port = _free_port()
    started = time.monotonic()
    result = _mashup("serve", "--host", "0.0.0.0", "--port", str(port), "--workspace",
                     str(tmp_path), env=_env())
    assert result.returncode != 0
    assert "refusing to serve on 0.0.0.0" in result.stderr
    assert "--read-only" in result.stderr and access.TOKEN_ENV in result.stderr
    assert time.monotonic() - started < 60, "it answered at once: no server was started"
    with socket.socket() as s:  # and nothing listens on the port it was asked for
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_the_command_it_builds(tmp_path):
    argv, env = serve_command(str(tmp_path), "0.0.0.0", 8600, read_only=True, environ=_env())
    assert argv[1:4] == ["-m", "streamlit", "run"] and argv[4].endswith("app.py")
    assert argv[5:] == ["--server.address", "0.0.0.0", "--server.port", "8600",
                        "--server.headless", "true"]
    assert env["MASHUP_WORKSPACE"] == str(tmp_path.resolve()) and env[access.READ_ONLY_ENV] == "1"

    # a token opens a writable dashboard to the room; an inherited read-only flag is dropped
    _, env = serve_command(str(tmp_path), "0.0.0.0", 8600, read_only=False,
                           environ=_env(MASHUP_TOKEN="correct-horse-battery", MASHUP_READ_ONLY="1"))
    assert access.READ_ONLY_ENV not in env and env[access.TOKEN_ENV] == "correct-horse-battery"
    with pytest.raises(ServeError, match="at least 8"):
        serve_command(str(tmp_path), "0.0.0.0", 8600, False, environ=_env(MASHUP_TOKEN="short"))
    # loopback needs neither
    _, env = serve_command(str(tmp_path), "127.0.0.1", 8600, False, environ=_env())
    assert access.READ_ONLY_ENV not in env


def test_read_only_server_starts_and_answers_health(tmp_path):
    port = _free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mashup_core.cli", "serve", "--read-only", "--host",
             "127.0.0.1", "--port", str(port), "--workspace", str(tmp_path / "ws")],
            env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                            timeout=2) as reply:
                    if reply.read() == b"ok":
                        break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no healthy server in 90 s:\n" + log.read_text()
            time.sleep(0.5)
        assert "read-only access" in log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server replaced the CLI process (execve)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
