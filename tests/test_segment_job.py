"""``jobs/segment_dataset.py`` as users run it: ``ray job submit`` to a head started by the test, and the CLI."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from segment_fixtures import free_port, make_checkpoints, write_images

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _wait_for_dashboard(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/api/version", timeout=2)
            return
        except urllib.error.HTTPError:  # answering (e.g. 401 with token auth) means it is up
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no Ray dashboard at {url} after {timeout} s")


@pytest.fixture(scope="module")
def ray_head():
    """``ray start --head`` on free ports, in its own temp dir and process group; stopped afterwards.

    RAY_TMPDIR keeps its session files (and the "current cluster" address file) away from
    any other Ray on the machine; stopping signals only this process group, never `ray stop`.
    """
    tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's unix socket paths have a length limit
    # Every port explicit and free: other Ray instances on the machine hold the defaults.
    ports = {
        name: free_port()
        for name in (
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
    }
    env = {
        **os.environ,
        "RAY_TMPDIR": tmp,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # Token auth as Ray recommends, with a token of this test's own (not ~/.ray/auth_token).
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus",
        "2",
        "--include-dashboard",
        "true",
        "--dashboard-host",
        "127.0.0.1",
        "--disable-usage-stats",
    ]
    cmd += [arg for name, port in ports.items() for arg in (f"--{name}", str(port))]
    log = open(Path(tmp) / "ray-start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        _wait_for_dashboard(url, proc)
        yield url, env
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` shuts its own processes down on SIGTERM
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of this head still alive in its process group
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
        time.sleep(1)
        leftovers = subprocess.run(["pgrep", "-f", tmp], capture_output=True, text=True).stdout.split()
        assert not leftovers, f"Ray processes of the test head still running: {leftovers}"


def test_ray_job_submit_runs_the_job(tmp_path, ray_head):
    url, env = ray_head
    ckpts = make_checkpoints(tmp_path / "ckpt")
    inp, out = tmp_path / "images", tmp_path / "masks"
    write_images(inp, {"one.jpg": (64, 80), "nested/two.png": (72, 64)})
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        url,
        "--working-dir",
        str(REPO),
        "--",
        "python",
        "jobs/segment_dataset.py",
        "--input",
        str(inp),
        "--output",
        str(out),
        "--checkpoint",
        ckpts[0],
        "--fcn-checkpoint",
        ckpts[1],
        "--top-k",
        "2",
        "--micro-batch",
        "4",
        "--crf-iterations",
        "3",
    ]
    for _ in range(10):  # the head's job agent comes up a few seconds after its dashboard
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, cwd=REPO)
        text = done.stdout + done.stderr
        if "No available agent to submit job" not in text:
            break
        time.sleep(3)
    assert done.returncode == 0, text[-4000:]
    assert "succeeded" in text.lower(), text[-4000:]
    assert "segment_dataset: 3 images processed (2 written, 1 errors" in text, text[-4000:]
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["inputs"], summary["written"], summary["errors"]) == (3, 2, 1)
    assert (out / "one.png").is_file() and (out / "nested" / "two.png").is_file()
    assert any((out / "_parquet").iterdir()) and any((out / "_errors").iterdir())


def test_cli_fails_fast_on_bad_arguments(tmp_path):
    ckpts = make_checkpoints(tmp_path / "ckpt")
    inp = tmp_path / "images"
    write_images(inp, {"one.jpg": (32, 32)})
    script = [sys.executable, str(REPO / "jobs" / "segment_dataset.py")]
    cases = {
        "checkpoint not found": [
            "--input",
            str(inp),
            "--output",
            str(tmp_path / "o1"),
            "--checkpoint",
            str(tmp_path / "nope.safetensors"),
            "--fcn-checkpoint",
            ckpts[1],
        ],
        "input not found": [
            "--input",
            str(tmp_path / "missing"),
            "--output",
            str(tmp_path / "o2"),
            "--checkpoint",
            ckpts[0],
            "--fcn-checkpoint",
            ckpts[1],
        ],
        "inside the input": [
            "--input",
            str(inp),
            "--output",
            str(inp / "masks"),
            "--checkpoint",
            ckpts[0],
            "--fcn-checkpoint",
            ckpts[1],
        ],
    }
    for message, args in cases.items():
        done = subprocess.run(script + args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o1").exists() and not (inp / "masks").exists()


def test_cluster_yaml_is_a_valid_launcher_config():
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    validate_config(cfg)  # Ray's own schema for `ray up`
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert {"gpu_worker", "cpu_worker"} <= set(types)
    assert any("pip install -e ." in c for c in cfg["setup_commands"])
