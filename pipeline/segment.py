"""The segmentation job as one streaming Ray Data chain.

::

    listing (driver) -> read_files -> decode_images        CPU tasks
      -> ProposalStage (EdgeBoxes)                         CPU actors
      -> Segmenter (crop, DeconvNet, max-aggregate, FCN)   GPU actors
      -> CRFStage (class-pruned dense CRF)                 CPU actors
      -> write_outputs (PNG / Parquet / _errors)           CPU tasks
    -> _progress.json while it runs, _summary.json at the end (driver)

That is the "split" layout, used with GPUs. Without GPUs the "fused" layout runs
decode, proposals, model and CRF of each image in one CPU actor (``FusedStage``, one
per CPU) between the same read and write: see ``stage_resources``.

``prepare`` does every check that can fail on a bad argument (checkpoints, input
root, output location, edge model) before Ray starts any work; ``run`` executes the
chain and writes the summary. Rows carry ``image_id`` all the way, because Ray Data
does not preserve order, and failures travel as error rows, so every input that
was not skipped comes back exactly once from the writer.

The evaluation job (``pipeline.evaluation.job``) runs the same start of the chain
(``read_chain``: listing, read, re-cut of the blocks), sized by ``stage_resources``,
with the same retry bounds (``retry_args``) and run limits (``limit_run``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field

from models import read_checkpoint_meta
from models.storage import atomic_write, join, url_to_fs
from pipeline.proposals import ProposalGenerator
from pipeline.segment_config import SegmentConfig
from pipeline.sources import (
    PROGRESS_FILE,
    SUMMARY_FILE,
    assign_outputs,
    check_output_location,
    existing_results,
    list_inputs,
    mark_pending,
    output_totals,
    scan_output,
)
from pipeline.stall_guard import JobStalled, Stalled, guarded, stall_message

# Rows per block of the listing (cheap to make: one driver put per block) and per block after the read
# (what each later task holds: its input and output stay a few images big however long the run is).
LISTING_ROWS = 64
BLOCK_ROWS = 4
# The fused layout's blocks: one image each, so that at the end of a run no actor still has a queue
# of several images while another is idle (4-image blocks left CPU time unused at the end of a run:
# bench/HISTORY.md section 4b). Nothing is batched across images on CPUs.
FUSED_BLOCK_ROWS = 1
# Default object-store limit of a run (see stage_resources): per actor of the three pools, room for
# STORE_BLOCKS_PER_ACTOR blocks of VOC-size images with their probabilities (the largest hop: the model's
# C x H x W float16 output plus the image); and the least.
STORE_BLOCKS_PER_ACTOR = 4
REFERENCE_PIXELS = 500 * 375
MIN_STORE_MB = 128
# Memory of a fused actor besides its weights (see fused_actor_bytes).
FUSED_BASE_BYTES = 3 * 2**29  # 1.5 GiB


@dataclass
class Plan:
    """What a run will do, decided before any work starts."""

    input_root: str
    todo: list[dict]  # items to process: path, image_id, mask_key, status, error, needs_row
    n_inputs: int
    n_skipped: int
    class_names: list[str]
    palette: list[list[int]]
    checkpoint_id: str | None
    fcn_checkpoint_id: str | None
    model_bytes: int = 0  # size of the checkpoints the model stage loads
    items: list[dict] = field(default_factory=list)  # every listed input (todo and skipped)


def prepare(cfg: SegmentConfig) -> Plan:
    """Validate arguments and list the work; raises ValueError/FileNotFoundError on a bad argument."""
    cfg.validate()
    for url in (cfg.input, cfg.output):
        if url.startswith("memory://"):  # fsspec's memory filesystem lives in one process only
            raise ValueError(
                f"{url!r}: memory:// is private to one process, Ray workers cannot see it; use a shared store"
            )
    metas = {}
    if cfg.inference.ensemble != "fcn":
        metas["deconvnet"] = read_checkpoint_meta(cfg.checkpoint)
        if metas["deconvnet"].architecture != "deconvnet":
            raise ValueError(f"--checkpoint {cfg.checkpoint} holds {metas['deconvnet'].architecture}, not deconvnet")
    if cfg.inference.ensemble != "deconvnet":
        metas["fcn"] = read_checkpoint_meta(cfg.fcn_checkpoint)
        if not metas["fcn"].architecture.startswith("fcn"):
            raise ValueError(f"--fcn-checkpoint {cfg.fcn_checkpoint} holds {metas['fcn'].architecture}, not an FCN")
    if len({m.num_classes for m in metas.values()}) != 1:
        raise ValueError("the DeconvNet and FCN checkpoints have different numbers of classes")
    meta = metas.get("deconvnet") or metas["fcn"]
    ProposalGenerator(cfg.proposals)  # loads --edge-model now, so a bad one fails before any work
    root, items = list_inputs(cfg.input, cfg.extensions)
    check_output_location(root or cfg.input, cfg.output)
    fs, out_path = url_to_fs(cfg.output)
    try:
        fs.makedirs(out_path, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the output {cfg.output!r}: {exc}") from exc
    items = assign_outputs(items)
    todo = items
    if cfg.skip_existing:
        todo = mark_pending(items, existing_results(cfg.output, cfg.outputs), cfg.outputs)
    return Plan(
        input_root=root,
        todo=todo,
        n_inputs=len(items),
        n_skipped=len(items) - len(todo),
        class_names=list(meta.class_names),
        palette=[list(c) for c in meta.palette],
        checkpoint_id=metas["deconvnet"].checkpoint_id if "deconvnet" in metas else None,
        fcn_checkpoint_id=metas["fcn"].checkpoint_id if "fcn" in metas else None,
        model_bytes=sum(m.file_bytes for m in metas.values()),
        items=items,
    )


@dataclass
class StageResources:
    """The layout, actor pool sizes and per-task/actor CPU reservations for the chain."""

    layout: str  # "fused" (one CPU actor pool runs decode..CRF) or "split" (a pool per stage)
    cpu_share: float  # CPUs reserved per CPU task, and per split-layout CPU actor
    model_actors: int  # split layout
    model_gpus: float  # 1 per model actor when the cluster has GPUs, else 0 (CPU actors)
    proposal_actors: int  # split layout
    crf_actors: int  # split layout
    fused_actors: int  # fused layout
    fused_cpus: float  # CPUs reserved per fused actor
    object_store_bytes: int  # Ray Data's object-store limit for this run's dataset


def fused_actor_bytes(model_bytes: int) -> int:
    """An estimate of the memory one fused actor needs: torch, the CRF and a VOC-size image's working set
    (FUSED_BASE_BYTES, above the peak RSS of a fused actor with the ~10 MB demo checkpoints: BENCHMARKS.md
    section 4a), plus the weights twice (the file read and the model built from it)."""
    return FUSED_BASE_BYTES + 2 * model_bytes


class ClusterTooSmall(ValueError):
    """The cluster cannot run the job as asked (a usage error: the job exits 2 before any work)."""


# Task slots (of ``cpu_share`` CPUs each) the actor pools leave free, so that the read (which also re-cuts
# the blocks), decode and write tasks can always be scheduled beside them: one for each.
TASK_SLOTS = 3
# The actor pools together take at most this share of the cluster's CPUs.
ACTOR_CPU_FRACTION = 0.65


def stage_resources(
    cfg: SegmentConfig,
    resources: dict[str, float],
    num_classes: int = 21,
    model_bytes: int = 0,
    images: int | None = None,
) -> StageResources:
    """Defaults from the cluster's resources; never more actor reservations than the cluster can hold.

    Actors hold their CPUs for the whole run; if they took every CPU, the read, decode and
    write tasks could never be scheduled and the dataset would hang (on a 4-CPU, 1-GPU node
    it did: the GPU model actor took a whole CPU and the CPU pools the rest). Every task and
    every actor therefore reserves a fraction of a CPU, ``cpu_share`` (1/8 of the cluster's
    CPUs, at most 1), the GPU model actors included, and the actor pools together take at
    most 65% of the CPUs while leaving TASK_SLOTS task slots free.

    Layout (``cfg.layout``, "auto" by default): with GPU model actors, or when the
    proposal/CRF pools are sized by hand, one pool per stage ("split"); otherwise one
    pool of "fused" CPU actors that each run decode, proposals, model and CRF on their
    images (``pipeline.fused_stage``): one actor per CPU (``model_bytes``, the
    checkpoints' size, caps it by the cluster's memory; a run of few ``images`` gets
    no more actors than blocks), each reserving at most 0.65 CPU. On 2 CPUs that
    is faster than the split layout (BENCHMARKS.md section 4a).

    Split layout: with GPUs, one model actor per GPU and the rest of the actor budget goes
    to the proposal and CRF pools (1:2, the CRF costs more). Without GPUs every pool takes its
    share of the budget (at least one actor), after the measured cost per image on one
    core of EdgeBoxes, the model stage and the class-pruned CRF (BENCHMARKS.md section 4a):
    proposals 20%, model 30%, CRF 50%. On 2 CPUs without a GPU that is 1 / 1 / 2 actors
    of 0.25 CPU, with one GPU 1 / 1 / 3.

    The object-store limit bounds what the stages before the slowest one queue up:
    without it Ray Data lets each stage run ahead up to a share of the whole store
    (hundreds of MiB here, GiBs on a cluster node), so the peak grew with the run.
    The default leaves each actor room for STORE_BLOCKS_PER_ACTOR blocks of VOC-size
    images with what crosses the store after its stage (split: the model's
    ``num_classes`` float16 probabilities; fused: only the mask): a tighter limit
    (128 MiB for 4 split actors, 6 classes) held back the CRF, the slowest stage
    (BENCHMARKS.md section 5). ``--object-store-mb`` overrides it (larger images need more).

    Every pool has a fixed size. Ray Data grows an autoscaling pool only while each of
    its actors has a full queue of inputs, which the object-store limit prevents: a
    (1, 2) CRF pool then ran one actor for a whole 400-image run (half the speed), or
    started and stopped a second one every few seconds.

    Raises ClusterTooSmall when the cluster cannot run the job as asked (no CPUs, fewer
    GPUs than the model actors ask for, hand-sized pools that leave no task a slot),
    unless ``cfg.autoscaling`` says that nodes are still to come.
    """
    total_cpus = float(resources.get("CPU", 0.0))
    cpus = max(total_cpus, 1.0)
    gpus = int(resources.get("GPU", 0.0))
    share = min(1.0, cpus / 8)
    budget = max(int(min(ACTOR_CPU_FRACTION * cpus, cpus - TASK_SLOTS * share) / share + 1e-9), 3)
    layout = cfg.layout
    if layout == "auto":
        hand_sized = cfg.model_gpus or cfg.proposal_actors or cfg.crf_actors
        layout = "split" if gpus or hand_sized else "fused"
    proposal_actors = model_actors = crf_actors = fused_actors = 0
    fused_cpus = model_gpus = 0.0
    if layout == "fused":
        fused_actors = cfg.model_actors or max(1, int(cpus))
        memory = resources.get("memory", 0.0)
        if not cfg.model_actors and memory:
            fused_actors = max(1, min(fused_actors, int(memory // fused_actor_bytes(model_bytes))))
        if not cfg.model_actors and images:
            fused_actors = min(fused_actors, math.ceil(images / FUSED_BLOCK_ROWS))
        fused_cpus = min(share, ACTOR_CPU_FRACTION * cpus / fused_actors)
        block_rows, bytes_per_pixel = FUSED_BLOCK_ROWS, 4  # only the mask (1 B) is in the store, not the image
    else:
        # An autoscaling cluster may have no GPU node yet: --model-gpus 1 asks for them anyway.
        model_gpus = cfg.model_gpus if cfg.model_gpus is not None else (1.0 if gpus else 0.0)
        if model_gpus:
            model_actors = cfg.model_actors or max(gpus, 1)
            rest = max(budget - model_actors, 2)
            proposal_actors = cfg.proposal_actors or max(1, rest // 3)
            crf_actors = cfg.crf_actors or max(1, rest - rest // 3)
        else:
            proposal_actors = cfg.proposal_actors or max(1, int(0.2 * budget))
            model_actors = cfg.model_actors or max(1, int(0.3 * budget))
            crf_actors = cfg.crf_actors or max(1, int(0.5 * budget))
        block_rows, bytes_per_pixel = BLOCK_ROWS, 2 * num_classes + 3
    actors = proposal_actors + model_actors + crf_actors + fused_actors
    per_actor = STORE_BLOCKS_PER_ACTOR * block_rows * REFERENCE_PIXELS * bytes_per_pixel
    store = cfg.object_store_mb * 2**20 if cfg.object_store_mb else max(MIN_STORE_MB * 2**20, actors * per_actor)
    res = StageResources(
        layout, share, model_actors, model_gpus, proposal_actors, crf_actors, fused_actors, fused_cpus, int(store)
    )
    if not cfg.autoscaling:
        check_cluster(res, total_cpus, gpus)
    return res


def check_cluster(res: StageResources, cpus: float, gpus: int) -> None:
    """Raise ClusterTooSmall when ``res`` cannot all be placed on a cluster of ``cpus`` and ``gpus`` with one
    task slot left over (the job would wait forever instead)."""
    advice = "pass --autoscaling if the cluster adds nodes on demand"
    if cpus <= 0:
        raise ClusterTooSmall(
            f"the cluster has no CPUs (a head started with --num-cpus=0 and no worker nodes yet?); the job needs "
            f"at least one CPU for its read, decode and write tasks; add a node, or {advice}"
        )
    if res.model_gpus and res.model_actors * res.model_gpus > gpus:
        raise ClusterTooSmall(
            f"{res.model_actors} model actors x {res.model_gpus:g} GPU need {res.model_actors * res.model_gpus:g} "
            f"GPUs, the cluster has {gpus}; lower --model-actors / --model-gpus, or {advice}"
        )
    if res.layout == "fused":
        reserved = res.fused_actors * res.fused_cpus
    else:
        reserved = res.cpu_share * (res.model_actors + res.proposal_actors + res.crf_actors)
    if reserved + res.cpu_share > cpus + 1e-9:
        raise ClusterTooSmall(
            f"the actor pools (model {res.model_actors}, proposals {res.proposal_actors}, CRF {res.crf_actors}, "
            f"{res.cpu_share:g} CPU each) reserve {reserved:g} of the cluster's {cpus:g} CPUs and leave no "
            f"{res.cpu_share:g} CPU for the read, decode and write tasks; use fewer actors, or {advice}"
        )


def build_dataset(cfg: SegmentConfig, plan: Plan, res: StageResources):
    """The lazy Ray Data chain over ``plan.todo``; iterating it runs the job."""
    task_retry, actor_retry = retry_args(cfg.task_retries)
    with retry_warnings_off():
        ds = _chain(cfg, plan, res, task_retry, actor_retry)
    return limit_run(ds, res.object_store_bytes)


def limit_run(ds, object_store_bytes: int):
    """Bound ``ds``'s run: Ray Data's object-store limit (``StageResources.object_store_bytes``, see
    stage_resources), and no stop of Ray Data's own when nothing progresses (the job's guard decides,
    ``pipeline.stall_guard``). Set on the dataset's own copy of the DataContext: they apply to this run only."""
    options = ds.context.execution_options
    options.resource_limits = options.resource_limits.copy(object_store_memory=object_store_bytes)
    ds.context.execution_no_progress_timeout_s = -1
    return ds


@contextlib.contextmanager
def retry_warnings_off():
    """Build a chain with ``retry_args``' options without Ray 2.60's deprecation warning for them (see retry_args)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        yield


def retry_args(retries: int) -> tuple[dict, dict]:
    """``map_batches`` options for task stages and actor stages: bounded retries of dead processes.

    A task or actor call whose process dies (lost node, OOM kill, native crash) is retried
    ``retries`` times: Ray Data's default is forever, so an input that kills its worker
    every time would hang the job. Dead actors are always restarted. A retry redoes the
    same batches, and every write is named by its content, so retries add no rows.
    Ray 2.60 deprecates these ``**ray_remote_args`` (removal planned for 2.64) without a
    named replacement yet; without them Ray's own (unbounded) defaults would apply and a
    poison input would hang the job, so pyproject.toml pins Ray below 2.64 and a Ray
    without them is refused here rather than run without bounds
    (tests/test_faults.py checks that the bound reaches the tasks and the actors).
    """
    import ray

    if "ray_remote_args" not in inspect.signature(ray.data.Dataset.map_batches).parameters:
        raise RuntimeError(
            f"Ray {ray.__version__}'s map_batches takes no retry options (max_retries, max_task_retries): "
            "deconvseg's retries would be unbounded; install the Ray version pyproject.toml names (<2.64)"
        )
    return {"max_retries": retries}, {"max_restarts": -1, "max_task_retries": retries}


def _chain(cfg: SegmentConfig, plan: Plan, res: StageResources, task_retry: dict, actor_retry: dict):
    from pipeline.writers import write_outputs

    share = res.cpu_share
    fused = res.layout == "fused"
    ds = read_chain(plan.todo, share=share, task_retry=task_retry, block_rows=FUSED_BLOCK_ROWS if fused else BLOCK_ROWS)
    if fused:
        from pipeline.fused_stage import FusedStage

        ds = ds.map_batches(
            FusedStage,
            fn_constructor_kwargs={"cfg": cfg},
            batch_size=FUSED_BLOCK_ROWS,
            batch_format="numpy",
            num_cpus=res.fused_cpus,
            compute=fixed_pool(res.fused_actors),
            **actor_retry,
        )
    else:
        ds = _split_stages(ds, cfg, res, task_retry, actor_retry)
    return ds.map_batches(
        write_outputs,
        fn_kwargs={
            "output": cfg.output,
            "formats": cfg.formats,
            "confidence_maps": cfg.confidence == "png",
            "class_names": plan.class_names,
            "palette": plan.palette,
            "checkpoint_id": plan.checkpoint_id,
            "fcn_checkpoint_id": plan.fcn_checkpoint_id,
            "config_hash": cfg.config_hash(),
        },
        batch_size=cfg.write_batch_size,
        batch_format="numpy",
        num_cpus=share,
        **task_retry,
    )


def read_chain(items: list[dict], *, share: float, task_retry: dict, block_rows: int = BLOCK_ROWS):
    """The chain's start, shared with the evaluation job: the listing's ``items`` (rows with a ``path``) in
    blocks of at most LISTING_ROWS, ``read_files`` tasks, then the blocks re-cut to exactly ``block_rows`` rows.

    The re-cut comes right after the read (the file bytes are the smallest payload): every later task then
    holds a few images, whatever the size of the run, so the data in flight between stages (2.8-7.9 MB per
    image after the model with 6-21 classes) does not grow with the listing. Read and re-cut run as one
    task of ``share`` CPUs with the ``task_retry`` options (``retry_args``).
    """
    import ray

    from pipeline.decode import read_files

    n = len(items)
    ds = (
        ray.data.from_items(items, override_num_blocks=max(1, min(n, max(8, math.ceil(n / LISTING_ROWS)))))
        .map_batches(read_files, batch_size=8, batch_format="numpy", num_cpus=share, **task_retry)
        .repartition(target_num_rows_per_block=block_rows, strict=True)
    )
    _same_task_args_as_the_read(ds, num_cpus=share, **task_retry)
    return ds


def fixed_pool(size: int):
    """A fixed-size actor pool (see stage_resources for why none autoscales)."""
    import ray

    return ray.data.ActorPoolStrategy(size=size)


def _same_task_args_as_the_read(ds, **remote_args) -> None:
    """Give the re-cut of the blocks (``Dataset.repartition``, which takes no resource arguments) the read's
    task arguments, so that Ray Data fuses the two into one task of ``cpu_share`` CPUs.

    Left alone, the re-cut ran as its own tasks of one whole CPU, which a small node never had free once the
    actor pools held theirs: on 4 CPUs and 1 GPU the job waited forever ("4.5/4 CPU"). Ray 2.60 has no public
    way to set them; the logical operator's ``ray_remote_args`` is the field ``Dataset.map_batches`` fills.
    """
    import ray

    op = ds._logical_plan.dag
    if not isinstance(getattr(op, "ray_remote_args", None), dict):
        raise RuntimeError(
            f"this Ray ({ray.__version__}) builds repartition differently from 2.60: deconvseg cannot size its "
            "tasks; install the Ray version pyproject.toml names"
        )
    op.ray_remote_args.update(remote_args)


def _split_stages(ds, cfg: SegmentConfig, res: StageResources, task_retry: dict, actor_retry: dict):
    """Decode tasks, then one actor pool per stage: proposals, model (on GPUs when there are), CRF."""
    from pipeline.crf import CRFStage, crf_stage_args
    from pipeline.decode import decode_images
    from pipeline.proposal_stage import ProposalStage
    from pipeline.segmenter import Segmenter

    share = res.cpu_share
    return (
        ds.map_batches(
            decode_images,
            fn_kwargs={"max_pixels": cfg.max_pixels},
            batch_size=BLOCK_ROWS,
            batch_format="numpy",
            num_cpus=share,
            **task_retry,
        )
        .map_batches(
            ProposalStage,
            fn_constructor_kwargs={"cfg": cfg.proposals},
            batch_size=1,
            batch_format="numpy",
            num_cpus=share,
            compute=fixed_pool(res.proposal_actors),
            **actor_retry,
        )
        .map_batches(
            Segmenter,
            fn_constructor_kwargs={
                "checkpoint": cfg.checkpoint if cfg.inference.ensemble != "fcn" else None,
                "fcn_checkpoint": cfg.fcn_checkpoint if cfg.inference.ensemble != "deconvnet" else None,
                "cfg": cfg.inference,
            },
            batch_size=cfg.batch_size,
            batch_format="numpy",
            num_cpus=share,  # with a GPU too: a whole CPU per GPU actor starved small GPU nodes (TASK_SLOTS)
            num_gpus=res.model_gpus,
            compute=fixed_pool(res.model_actors),
            **actor_retry,
        )
        .map_batches(
            CRFStage,
            fn_constructor_kwargs=crf_stage_args(cfg),
            batch_size=1,
            batch_format="numpy",
            num_cpus=share,
            compute=fixed_pool(res.crf_actors),
            **actor_retry,
        )
    )


def run(cfg: SegmentConfig, plan: Plan | None = None) -> dict:
    """Label every input of ``cfg`` (starting a local Ray if none is running); return the summary.

    ``plan`` is ``prepare(cfg)``'s result when the caller already checked the arguments.
    While the chain runs, ``_progress.json`` is rewritten every ``cfg.progress_interval``
    seconds (``pipeline.progress``). At the end ``_summary.json`` describes the output
    folder as a whole (``totals``, over every run that wrote to it) and this run
    (``last_run``).
    """
    import ray

    from pipeline.progress import ProgressReporter
    from pipeline.ray_session import ensure_ray

    start = time.time()
    plan = plan or prepare(cfg)
    ensure_ray(cfg.ray_address)
    res = stage_resources(cfg, ray.cluster_resources(), len(plan.class_names), plan.model_bytes, len(plan.todo))
    statuses: Counter[str] = Counter()
    seen: set[str] = set()
    duplicates = 0
    progress = ProgressReporter(
        join(cfg.output, PROGRESS_FILE), len(plan.todo), skipped=plan.n_skipped, interval=cfg.progress_interval
    )
    def describe() -> str:
        return stall_message("segment_dataset", cfg.stall_minutes, res)

    try:
        with progress:
            if plan.todo:
                batches = build_dataset(cfg, plan, res).iter_batches(batch_size=None, batch_format="numpy")
                for batch in guarded(batches, cfg.stall_minutes, describe):
                    for image_id, status in zip(batch["image_id"], batch["status"]):
                        duplicates += image_id in seen
                        seen.add(str(image_id))
                        statuses[str(status)] += 1
                    progress.add(batch["status"])
    except Stalled as stall:
        raise JobStalled(
            f"{stall}\nsegment_dataset: stopped after {len(seen)} of {len(plan.todo)} images. What was "
            "written is complete, and the same command resumes."
        ) from None
    except Exception as exc:
        exc.add_note(
            f"segment_dataset: stopped after {len(seen)} of {len(plan.todo)} images. What was written is complete, "
            "and the same command resumes. A task whose worker process died more than --task-retries "
            f"({cfg.task_retries}) times fails the job: look in the Ray logs for why it died (out of memory, or a "
            "crash on one input, which then needs removing)."
        )
        raise
    elapsed = time.time() - start
    processed = sum(statuses.values())
    errors = processed - statuses.get("ok", 0)
    totals = output_totals(scan_output(cfg.output, cfg.outputs), plan.items, cfg.outputs)
    summary = {
        "complete": totals["missing"] == 0,
        "totals": totals,
        "last_run": {
            "inputs": plan.n_inputs,
            "skipped_existing": plan.n_skipped,
            "processed": processed,
            "written": statuses.get("ok", 0),
            "errors": errors,
            "error_classes": {k: v for k, v in sorted(statuses.items()) if k != "ok"},
            "missing": len({i["image_id"] for i in plan.todo} - seen),
            "duplicates": duplicates,
            "seconds": round(elapsed, 3),
            "images_per_second": round(processed / elapsed, 3) if elapsed > 0 else None,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "input": cfg.input,
        "input_root": plan.input_root,
        "output": cfg.output,
        "formats": list(cfg.formats),
        "classes": [
            {"id": i, "name": name, "colour": list(colour)}
            for i, (name, colour) in enumerate(zip(plan.class_names, plan.palette))
        ],
        "checkpoint_id": plan.checkpoint_id,
        "fcn_checkpoint_id": plan.fcn_checkpoint_id,
        "config_hash": cfg.config_hash(),
        "config": dataclasses.asdict(cfg),
        "resources": dataclasses.asdict(res),
    }
    atomic_write(join(cfg.output, SUMMARY_FILE), json.dumps(summary, indent=2, default=str).encode())
    return summary
