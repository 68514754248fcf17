"""A private local Ray head for ``ray job submit``: started on free ports, stopped afterwards.

Used by ``make demo`` and the job-submission tests. The head runs in its own
``RAY_TMPDIR`` (so its "current cluster" file never points other Ray programs at it, and
a stale one of theirs never misleads it), its own process group (stopping it signals
only its processes, never ``ray stop``), with token authentication and a token of its
own (not ``~/.ray/auth_token``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Every port explicit and free: another Ray on the machine may hold the defaults.
_PORTS = (
    "port",
    "dashboard-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "ray-client-server-port",
    "node-manager-port",
    "object-manager-port",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Head:
    url: str  # dashboard / job-submission address, http://127.0.0.1:<port>
    env: dict[str, str]  # environment for `ray job submit` (token, PATH with this Python's bin)
    tmpdir: str

    def submit(self, args: list[str], *, working_dir: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir <working_dir> -- <args>``; waits for the job, output streamed.

        Returns the finished process with its combined output in ``stdout``; the job's
        exit status is the return code.
        """
        cmd = [_ray_bin(), "job", "submit", "--address", self.url, "--working-dir", working_dir, "--", *args]
        for _ in range(20):  # the job agent comes up a few seconds after the dashboard
            done = _run_teed(cmd, env=self.env, cwd=working_dir, timeout=timeout)
            if "No available agent to submit job" not in done.stdout:
                return done
            time.sleep(3)
        return done


def _ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


def _run_teed(cmd: list[str], *, env: dict, cwd: str, timeout: float) -> subprocess.CompletedProcess:
    # Stream the job's log to our stdout while keeping it for the caller.
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.time() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        sys.stdout.write(line)
        if time.time() > deadline:
            proc.kill()
            raise TimeoutError(f"{' '.join(cmd[:4])} ... ran past {timeout} s")
    proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "")


def _wait_for_dashboard(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/api/version", timeout=2)
            return
        except urllib.error.HTTPError:  # answering (e.g. 401 under token auth) means it is up
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no Ray dashboard at {url} after {timeout} s; see {log}")


@contextlib.contextmanager
def local_head(num_cpus: int | None = None, start_timeout: float = 180.0) -> Iterator[Head]:
    """``ray start --head --block`` on free ports; yields a :class:`Head`, stops it on exit.

    Args:
        num_cpus: CPUs the head offers (default: this machine's).
        start_timeout: seconds to wait for its dashboard.
    """
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's unix socket paths have a length limit
    ports = {name: free_port() for name in _PORTS}
    env = {
        **os.environ,
        "RAY_TMPDIR": tmp,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [_ray_bin(), "start", "--head", "--block", "--include-dashboard", "true",
           "--dashboard-host", "127.0.0.1", "--disable-usage-stats"]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    cmd += [arg for name, port in ports.items() for arg in (f"--{name}", str(port))]
    log_path = Path(tmp) / "ray-start.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        _wait_for_dashboard(url, proc, log_path, start_timeout)
        yield Head(url=url, env=env, tmpdir=tmp)
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` shuts its own processes down on SIGTERM
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of this head still alive in its group
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def leftover_processes(tmpdir: str) -> list[str]:
    """PIDs of processes still running from a head's temp dir (empty after a clean stop)."""
    time.sleep(1)
    return subprocess.run(["pgrep", "-f", tmpdir], capture_output=True, text=True).stdout.split()
