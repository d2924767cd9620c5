"""Omniglot training on Ray Train (``ray.enabled``): the runtime's driver runs ``train_omniglot``
as N DDP ranks, against the job's named shared memory in life-long mode (every rank writes it,
never cleared) or each rank's own episodic memory; the final encoder lands in output_dir."""

from __future__ import annotations

from pathlib import Path

from lifelong.data import load_omniglot
from lifelong.distributed import attach, ensure_memory
from lifelong.distributed.tags import memory_tags
from lifelong.experiments.omniglot.config import OmniglotTrainJob
from lifelong.experiments.omniglot.train import TrainResult, train_omniglot
from lifelong.models import build_encoder
from lifelong.models.checkpoint import ENCODER_FILE, save_encoder
from lifelong.runtime.ray_train import ensure_ray_for, fit_on_ray


def memory_cpus(job: OmniglotTrainJob) -> float:
    """CPUs the job's shard actors reserve (none in episodic mode)."""
    shared = job.shared_memory
    return shared.shards * shared.num_cpus if job.train.mode == "lifelong" else 0.0


def train_on_ray(job: OmniglotTrainJob, run_id: str | None, tracking_uri: str | None,
                 progress: bool = True) -> TrainResult:
    """Runs the job's training on Ray Train and writes the final encoder to output_dir.

    Args:
        job: The configuration (``job.ray`` says where and how many workers).
        run_id, tracking_uri: The MLflow run rank 0 logs into (None: no logging).
        progress: Progress bar on rank 0.

    Returns:
        The final checkpoint's encoder (``<output_dir>/encoder.pt``) and how the run went.
    """
    # The data first, in the driver: a missing archive fails here, before any Ray work, and
    # the workers of this machine read the preprocessed cache instead of each building it.
    background = load_omniglot("background", root=job.data.root, cache_dir=job.data.cache_dir,
                               progress=progress)
    ensure_ray_for(job.ray, memory_cpus(job))
    memory = None
    if job.train.mode == "lifelong":  # values: the background split's class ids
        spec = ensure_memory(job.shared_memory.spec(
            job.memory, key_dim=job.model.key_dim, num_values=background.images.shape[0],
            seed=job.train.seed), recreate=job.shared_memory.recreate)
        memory = (spec.name, spec.storage)
    state, reported = fit_on_ray(train_omniglot, job, ray_config=job.ray,
                       experiment=f"omniglot-{job.train.mode}", output_dir=job.output_dir,
                       memory=memory, run_id=run_id, tracking_uri=tracking_uri,
                       progress=progress)
    encoder = build_encoder(job.model.encoder, job.model.key_dim, job.model.dropout)
    encoder.load_state_dict(state["encoder"])
    target = save_encoder(Path(job.output_dir).resolve() / ENCODER_FILE, encoder,
                          encoder_name=job.model.encoder, key_dim=job.model.key_dim,
                          dropout=job.model.dropout, extra={**state["meta"], "step": state["step"]})
    wall, steps = float(state["elapsed_s"]), int(state["step"])
    images = steps * job.train.way * job.train.presentations * job.train.episodes_per_batch
    tags = memory_tags(attach(*memory)) if memory is not None else {}
    return TrainResult(checkpoint=target, steps=steps, wall_s=wall,
                       images_per_s=images / max(wall, 1e-9), last_metrics=reported,
                       memory_tags=tags)
