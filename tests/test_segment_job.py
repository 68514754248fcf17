"""``jobs/segment_dataset.py`` as users run it: ``ray job submit`` to a head started by the test, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from segment_fixtures import make_checkpoints, write_images

from pipeline.demo.local_head import leftover_processes, local_head
from pipeline.segment_config import SegmentConfig

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_head():
    """A private ``ray start --head`` (free ports, own temp dir, token auth), stopped afterwards."""
    with local_head(num_cpus=2) as head:
        yield head
    assert not leftover_processes(head.tmpdir), "Ray processes of the test head still running"


def test_ray_job_submit_runs_the_job(tmp_path, ray_head):
    ckpts = make_checkpoints(tmp_path / "ckpt")
    inp, out = tmp_path / "images", tmp_path / "masks"
    write_images(inp, {"one.jpg": (64, 80), "nested/two.png": (72, 64)})
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = ["python", "jobs/segment_dataset.py", "--input", str(inp), "--output", str(out),
            "--checkpoint", ckpts[0], "--fcn-checkpoint", ckpts[1],
            "--top-k", "2", "--micro-batch", "4", "--crf-iterations", "3", "--object-store-mb", "96"]
    done = ray_head.submit(args, working_dir=str(REPO), timeout=420)
    text = done.stdout
    assert done.returncode == 0, text[-4000:]
    assert "succeeded" in text.lower(), text[-4000:]
    assert "segment_dataset: 3 images processed (2 written, 1 errors" in text, text[-4000:]
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["last_run"]["inputs"], summary["last_run"]["written"], summary["last_run"]["errors"]) == (3, 2, 1)
    assert summary["resources"]["object_store_bytes"] == 96 * 2**20
    assert summary["resources"]["layout"] == "fused" and summary["resources"]["fused_actors"] >= 1  # no GPUs
    assert (out / "one.png").is_file() and (out / "nested" / "two.png").is_file()
    assert any((out / "_parquet").iterdir()) and any((out / "_errors").iterdir())


def test_cli_fails_fast_on_bad_arguments(tmp_path):
    ckpts = make_checkpoints(tmp_path / "ckpt")
    inp = tmp_path / "images"
    write_images(inp, {"one.jpg": (32, 32)})
    bad_edges = tmp_path / "edges.yml.gz"
    bad_edges.write_bytes(b"not a model")
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
        "object_store_mb must be >= 16": [
            "--input",
            str(inp),
            "--output",
            str(tmp_path / "o3"),
            "--checkpoint",
            ckpts[0],
            "--fcn-checkpoint",
            ckpts[1],
            "--object-store-mb",
            "1",
        ],
        "need --layout split": [
            "--input",
            str(inp),
            "--output",
            str(tmp_path / "o4"),
            "--checkpoint",
            ckpts[0],
            "--fcn-checkpoint",
            ckpts[1],
            "--layout",
            "fused",
            "--crf-actors",
            "2",
        ],
        "structured-edge model": [
            "--input",
            str(inp),
            "--output",
            str(tmp_path / "o5"),
            "--checkpoint",
            ckpts[0],
            "--fcn-checkpoint",
            ckpts[1],
            "--edge-model",
            str(bad_edges),
        ],
    }
    for message, args in cases.items():
        done = subprocess.run(script + args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists() and not (inp / "masks").exists()
    assert not (tmp_path / "o4").exists() and not (tmp_path / "o5").exists()


def test_cli_flags_reach_the_config():
    """Every flag a user can give ends up in the job's SegmentConfig as it means (no Ray needed)."""
    sys.path.insert(0, str(REPO / "jobs"))
    import segment_dataset as job

    def cfg(*extra: str):
        base = ["--input", "in", "--output", "out", "--checkpoint", "d.safetensors"]
        base += ["--fcn-checkpoint", "f.safetensors"]
        return job.config_from_args(job.get_args_parser().parse_args([*base, *extra]))

    default = cfg()
    # The command line's defaults are the dataclasses' own.
    assert default == SegmentConfig(
        input="in", output="out", checkpoint="d.safetensors", fcn_checkpoint="f.safetensors"
    )
    assert default.skip_existing and default.formats == ("png", "parquet") and default.inference.ensemble == "mean"
    assert default.stall_minutes == 30 and not default.autoscaling
    assert cfg("--no-skip-existing").skip_existing is False
    assert cfg("--format", "parquet").formats == ("parquet",)
    assert cfg("--ensemble", "deconvnet").inference.ensemble == "deconvnet"  # DeconvNet alone
    assert cfg("--ensemble", "none").inference.ensemble == "deconvnet"  # its old spelling
    assert cfg("--ensemble", "fcn").inference.ensemble == "fcn"
    assert cfg("--extensions", "jpg, .PNG,tif").extensions == ("jpg", ".PNG", "tif")
    assert cfg("--stall-minutes", "2.5", "--autoscaling").stall_minutes == 2.5
    assert cfg("--autoscaling").autoscaling is True
    assert cfg("--crf", "off").crf.enabled is False
    sized = cfg("--layout", "split", "--model-gpus", "0.5", "--model-actors", "2", "--crf-actors", "3")
    assert (sized.layout, sized.model_gpus, sized.model_actors, sized.crf_actors) == ("split", 0.5, 2, 3)


def test_cluster_yaml_is_a_valid_launcher_config():
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    validate_config(cfg)  # Ray's own schema for `ray up`
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert {"gpu_worker", "cpu_worker"} <= set(types)
    assert any("pip install -e ." in c for c in cfg["setup_commands"])
