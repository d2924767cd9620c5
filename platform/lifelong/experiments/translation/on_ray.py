"""The translator on Ray Train (``ray.enabled``): the runtime's driver runs
``train_translation`` as N DDP ranks against one named, shared ``ShardedMemory`` (never
cleared); the driver writes ``<output_dir>/translator.pt`` with the memory's contents."""

from __future__ import annotations

import time
from pathlib import Path

from lifelong.data import load_multi30k
from lifelong.distributed import attach, ensure_memory
from lifelong.distributed.tags import memory_tags
from lifelong.experiments.translation.config import TranslationJob
from lifelong.experiments.translation.train import TranslationTrainResult, train_translation
from lifelong.memory import MemoryConfig
from lifelong.models.checkpoint import TRANSLATOR_FILE, TranslationModel
from lifelong.models.translator import Translator
from lifelong.models.vocab import SubwordVocab
from lifelong.runtime.ray_train import ensure_ray_for, fit_on_ray


def train_translation_on_ray(job: TranslationJob, run_id: str | None,
                             tracking_uri: str | None,
                             progress: bool = True) -> TranslationTrainResult:
    """Runs the job's training on Ray Train; returns the translator written to output_dir."""
    load_multi30k("train", root=job.data.root, progress=progress)  # missing data fails here
    shared = job.shared_memory
    ensure_ray_for(job.ray, shared.shards * shared.num_cpus if job.model.use_memory else 0.0)
    memory = None
    if job.model.use_memory:  # values: target subword ids, < data.vocab_size
        spec = ensure_memory(shared.spec(job.memory, key_dim=job.model.key_dim,
                                         num_values=job.data.vocab_size, seed=job.train.seed),
                             recreate=shared.recreate)
        memory = (spec.name, spec.storage)
    start = time.perf_counter()
    state, _ = fit_on_ray(train_translation, job, ray_config=job.ray, experiment="translation",
                          output_dir=job.output_dir, memory=memory, run_id=run_id,
                          tracking_uri=tracking_uri, progress=progress)
    sv, tv = SubwordVocab(state["source_vocab"]), SubwordVocab(state["target_vocab"])
    model = Translator(len(sv), len(tv), job.model)
    model.load_state_dict(state["model"])
    local, tags = None, {}
    if memory is not None:  # the shared memory's contents travel with the checkpoint
        sharded = attach(*memory)
        tags = memory_tags(sharded)
        local = MemoryConfig.of(sharded).build(key_dim=sharded.key_dim,
                                               num_slots=sharded.num_slots,
                                               num_values=sharded.num_values)
        local.load_state_dict(sharded.state_dict())
    path = TranslationModel(model, sv, tv, local).save(
        Path(job.output_dir).resolve() / TRANSLATOR_FILE, extra=state["meta"])
    steps = int(state["step"])
    wall = time.perf_counter() - start
    return TranslationTrainResult(path, steps, wall,
                                  steps * job.train.batch_size / max(wall, 1e-9), tags)
