"""The split (GPU) layout on GPU-shaped clusters, run on the CPU with logical GPUs.

Ray hands out GPUs it is told about (``ray.init(num_gpus=1)``, ``Cluster.add_node(num_gpus=1)``)
without checking for a device, so the job plans, sizes and schedules exactly as on a GPU
cluster while its model runs on the CPU (``--device cpu``). Every GPU cluster runs the
split layout; before these tests it had never run with GPU resources, and on a 1-GPU node
with 2 or 4 CPUs it waited forever (the model actor took a whole CPU and the block re-cut
asked for another). Shapes: one node with 2 CPUs + 1 GPU, one with 4 CPUs + 1 GPU, and one
like cluster.yaml (a head that runs no work, a GPU node, a CPU node), where a dead read
task, decode task, proposal actor, model actor and CRF actor change nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image
from segment_fixtures import make_checkpoints, tiny_config, write_images

from pipeline import faults
from pipeline.reference import reference_results
from pipeline.segment import TASK_SLOTS, ClusterTooSmall, prepare, run, stage_resources

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SIZES = {"a.jpg": (48, 64), "b.jpg": (40, 56), "c.png": (56, 48), "d.jpg": (36, 60), "e.jpg": (44, 44)}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def bucket(tmp_path_factory) -> Path:
    images = tmp_path_factory.mktemp("bucket") / "images"
    write_images(images, SIZES, seed=3)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return images


@pytest.fixture(scope="module")
def reference(bucket, ckpts, tmp_path_factory) -> dict[str, dict]:
    """Every input's status and mask from the stages called in-process, without Ray."""
    cfg = tiny_config(str(bucket), str(tmp_path_factory.mktemp("unused") / "out"), ckpts)
    return reference_results(cfg, prepare(cfg).todo)


@contextlib.contextmanager
def logical_gpu_ray(cpus: int, fault_dir: Path | None = None):
    """A private single-node Ray that advertises one GPU (there is none)."""
    with pytest.MonkeyPatch.context() as mp:
        if fault_dir is not None:
            mp.setenv(faults.ENV, str(fault_dir))
        if ray.is_initialized():
            ray.shutdown()
        ray.init(address="local", num_cpus=cpus, num_gpus=1, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def assert_equals_reference(out: Path, summary: dict, reference: dict[str, dict]) -> None:
    """Every input once (result or error row), each mask byte-equal to the in-process reference's."""
    assert summary["resources"]["layout"] == "split" and summary["resources"]["model_gpus"] == 1.0
    last = summary["last_run"]
    assert (last["processed"], last["missing"], last["duplicates"]) == (len(reference), 0, 0)
    rows = pq.read_table(out / "_parquet").to_pylist()
    assert sorted(r["image_id"] for r in rows) == sorted(reference)
    for row in rows:
        want = reference[row["image_id"]]
        assert row["status"] == want["status"], row["image_id"]
        if want["status"] == "ok":
            mask = np.asarray(Image.open(out / (os.path.splitext(row["image_id"])[0] + ".png")))
            np.testing.assert_array_equal(mask, want["mask"], err_msg=row["image_id"])
    assert reference["broken.jpg"]["status"] != "ok"  # an error row crossed every stage too


# --- sizing (no Ray) ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cpus", [1, 2, 4, 8, 16, 64])
@pytest.mark.parametrize("gpus", [1, 4])
def test_split_pools_leave_every_task_a_slot(cpus, gpus):
    """The model actors reserve the same CPU share as every other actor, and all actors together leave
    TASK_SLOTS task slots free (read + re-cut, decode, write) on any node shape, GPU nodes included."""
    res = stage_resources(tiny_config("in", "out", ("a", "b")), {"CPU": float(cpus), "GPU": float(gpus)})
    assert res.layout == "split" and res.model_actors == gpus and res.model_gpus == 1.0
    reserved = res.cpu_share * (res.model_actors + res.proposal_actors + res.crf_actors)
    if res.model_actors + 2 <= 0.65 * cpus / res.cpu_share:  # room for the model pools beside 1 + 1 CPU actors
        assert reserved + TASK_SLOTS * res.cpu_share <= cpus + 1e-9
    assert res.proposal_actors >= 1 and res.crf_actors >= res.proposal_actors


def test_a_cluster_that_cannot_run_the_job_is_refused_unless_it_autoscales():
    cfg = tiny_config("in", "out", ("a", "b"))
    with pytest.raises(ClusterTooSmall, match="no CPUs"):
        stage_resources(cfg, {"CPU": 0.0, "GPU": 1.0})  # a head started with --num-cpus=0, no workers yet
    gpu_wanted = tiny_config("in", "out", ("a", "b"), model_gpus=1.0)
    with pytest.raises(ClusterTooSmall, match="need 1 GPUs, the cluster has 0"):
        stage_resources(gpu_wanted, {"CPU": 8.0})
    too_many = tiny_config("in", "out", ("a", "b"), model_gpus=1.0, model_actors=2)
    with pytest.raises(ClusterTooSmall, match="need 2 GPUs, the cluster has 1"):
        stage_resources(too_many, {"CPU": 8.0, "GPU": 1.0})
    crowded = tiny_config("in", "out", ("a", "b"), crf_actors=8)
    with pytest.raises(ClusterTooSmall, match="leave no 0.25 CPU"):
        stage_resources(crowded, {"CPU": 2.0})
    for cfg_, resources in ((gpu_wanted, {"CPU": 8.0}), (crowded, {"CPU": 2.0}), (cfg, {"CPU": 0.0})):
        auto = tiny_config("in", "out", ("a", "b"), **{**_hand_sizes(cfg_), "autoscaling": True})
        stage_resources(auto, resources)  # sized from what is there now; nodes may come


def _hand_sizes(cfg) -> dict:
    return {k: getattr(cfg, k) for k in ("model_gpus", "model_actors", "crf_actors") if getattr(cfg, k)}


# --- runs on logical GPUs ------------------------------------------------------------------------------------


@pytest.mark.timeout(400)
@pytest.mark.parametrize("cpus", [2, 4])
def test_one_gpu_node_with_few_cpus_finishes(cpus, bucket, ckpts, reference, tmp_path):
    """The shapes that waited forever (g4dn.xlarge / g5.xlarge have 4 vCPUs and 1 GPU)."""
    out = tmp_path / "out"
    with logical_gpu_ray(cpus):
        summary = run(tiny_config(str(bucket), str(out), ckpts, stall_minutes=4))
    assert summary["resources"]["model_actors"] == 1
    assert_equals_reference(out, summary, reference)


def test_evaluation_on_a_gpu_node(synth_voc, tmp_path):
    """The evaluation job's model stage on a logical GPU: the same confusion matrix as in-process."""
    sys.path.insert(0, str(REPO / "jobs"))
    import evaluate as evaluate_job

    from pipeline.labelled import open_labelled_set
    from pipeline.metrics import ConfusionMatrix
    from pipeline.segmenter import InferenceConfig, Segmenter

    ckpts = make_checkpoints(tmp_path / "ckpt", num_classes=6)  # synthvoc's classes
    args = evaluate_job.get_args_parser().parse_args(
        ["--data", synth_voc, "--checkpoint", ckpts[0], "--fcn-checkpoint", ckpts[1], "--output",
         str(tmp_path / "report"), "--variants", "fcn", "--device", "cpu", "--stall-minutes", "4"]
    )
    with logical_gpu_ray(2):
        assert evaluate_job.main(args) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    seg = Segmenter(None, ckpts[1], InferenceConfig(ensemble="fcn", device="cpu"))
    cm = ConfusionMatrix(6)
    for row in open_labelled_set(synth_voc, "val").rows:
        image = np.asarray(Image.open(row["path"]).convert("RGB"))
        probs = seg.predict([image], [np.zeros((0, 4), np.float32)])[0]
        cm.update(probs.argmax(0), np.asarray(Image.open(row["label_path"])))
    assert report["confusion_matrices"]["fcn"] == cm.mat.tolist()


def test_training_on_logical_gpus_is_refused_clearly(tmp_path):
    from pipeline.train.config import TrainConfig
    from pipeline.train.run import check_gpus_usable

    with logical_gpu_ray(2):
        check_gpus_usable(TrainConfig(data="d", output=str(tmp_path), use_gpu=False))  # CPUs asked: fine
        for asked in (None, True):  # auto picks the GPU the cluster advertises
            with pytest.raises(ValueError, match="sees no CUDA device.*--use-gpu false"):
                check_gpus_usable(TrainConfig(data="d", output=str(tmp_path), use_gpu=asked))


@pytest.mark.timeout(600)
def test_cluster_yaml_shape_survives_dead_tasks_and_actors_of_every_stage(bucket, ckpts, reference, tmp_path):
    """A head with no CPUs, a GPU node and a CPU node (cluster.yaml's node types, small). A call of each of
    the read task, decode task, proposal actor, model actor and CRF actor kills its process:
    the tasks are retried, the actors restarted (on the same or the other node), and the output equals
    the in-process reference, every input once."""
    from ray.cluster_utils import Cluster

    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    points = ("read_task", "decode_task", "proposal_batch", "model_batch", "crf_batch")
    for point in points:  # the read of so few images is one task: its first call dies
        (fault_dir / f"{point}.json").write_text(json.dumps({"kill_at_call": 1 if point == "read_task" else 2}))
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(faults.ENV, str(fault_dir))  # the nodes' processes inherit it
        if ray.is_initialized():
            ray.shutdown()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        try:
            cluster.add_node(num_cpus=2, num_gpus=1, object_store_memory=150 * 2**20)
            cluster.add_node(num_cpus=2, object_store_memory=150 * 2**20)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False)
            summary = run(tiny_config(str(bucket), str(out), ckpts, stall_minutes=4))
        finally:
            ray.shutdown()
            cluster.shutdown()
    kills = {p: len(list(fault_dir.glob(f"{p}.killed-*"))) for p in points}
    assert kills == dict.fromkeys(points, 1)
    assert summary["resources"]["cpu_share"] == 0.5  # 4 CPUs in all: the head's 0 counted
    assert_equals_reference(out, summary, reference)


# --- the job's own refusals and stall guard ----------------------------------------------------------------


@pytest.mark.timeout(400)
def test_job_refuses_a_missing_gpu_and_stops_a_stall_then_resumes(bucket, ckpts, tmp_path):
    """On a private Ray without GPUs, ``--model-gpus 1`` is refused at start (exit 2); with ``--autoscaling``
    it waits for a GPU node that never comes, and the stall guard stops it (exit 6) with a message naming
    the actor and what it waits for. Nothing is lost: the same output then completes without the flag."""
    out = tmp_path / "out"
    base = [
        sys.executable,
        str(REPO / "jobs" / "segment_dataset.py"),
        "--input",
        str(bucket),
        "--output",
        str(out),
        "--checkpoint",
        ckpts[0],
        "--fcn-checkpoint",
        ckpts[1],
        "--top-k",
        "3",
        "--micro-batch",
        "4",
        "--device",
        "cpu",
        "--crf-iterations",
        "5",
        "--batch-size",
        "3",
        "--write-batch-size",
        "4",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}

    def job(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *extra], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)

    refused = job("--model-gpus", "1")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "1 model actors x 1 GPU need 1 GPUs, the cluster has 0" in refused.stderr
    assert "--autoscaling" in refused.stderr

    stalled = job("--model-gpus", "1", "--autoscaling", "--stall-minutes", "0.25")
    assert stalled.returncode == 6, stalled.stderr[-3000:]
    assert "no image finished for 0.25 minutes (--stall-minutes)" in stalled.stderr
    assert "MapWorker(MapBatches(Segmenter)) actor needs 0.25 CPU, 1 GPU" in stalled.stderr
    assert "the same command resumes" in stalled.stderr

    done = job()
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["complete"] and summary["totals"]["done"] == len(SIZES) + 1
