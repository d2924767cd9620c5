"""The translation jobs: ``lifelong train translation`` (in process or on Ray Train, logged to
MLflow) and ``lifelong evaluate translation`` (BLEU on a Multi30k test set, or on the four with
``split: all``, and the one-shot rare-word table of a checkpoint;
jobs/configs/evaluate_translation.yaml)."""

from __future__ import annotations

import json
import sys
import time

from lifelong import metrics
from lifelong.data import load_multi30k
from lifelong.data.multi30k import TEST_SPLITS, Multi30kSplit
from lifelong.errors import CorruptArchiveError, DataError
from lifelong.experiments.translation.config import ALL_SPLITS, TranslationEvalJob, TranslationJob
from lifelong.experiments.translation.evaluate import bleu, rare_word_items, run_rare_words, translate
from lifelong.experiments.translation.train import TranslationTrainResult, train_translation
from lifelong.models.checkpoint import TranslationModel
from lifelong.models.serving import GreedyTranslator, translator_input_example
from lifelong.runtime.config import durable_outputs
from lifelong.tracking import TrackedRun, job_run, log_model, redact_uri, resolve_model_file

# The sentences of the logged model's input example (its signature: ids in, ids out).
EXAMPLE_SENTENCES = ["A man is riding a bicycle.", "Two dogs play in the snow."]
# The rare-word figures logged as metrics (every column goes to the table artifact).
RARE_HEADLINE = ("hit_without", "hit_with")


def log_translator_model(run: TrackedRun, checkpoint, register_as: str | None):
    """Logs a translator checkpoint into ``run`` as the MLflow model ``translator``
    (``GreedyTranslator``: source ids in, greedy target ids out; registered as
    ``register_as`` when given) and prints where it is."""
    tm = TranslationModel.load(checkpoint)
    example = translator_input_example(tm.source_vocab.encode(EXAMPLE_SENTENCES))
    logged = log_model(run, GreedyTranslator(tm.model, tm.memory).eval(), checkpoint,
                       name=metrics.TRANSLATOR_ARTIFACT_DIR, input_example=example,
                       serialization_format="pickle", register_as=register_as)
    print(f"MLflow model {logged.registered or logged.run_uri}", flush=True)
    return logged


def run_translation_train_job(job: TranslationJob,
                              progress: bool = True) -> TranslationTrainResult:
    """Trains (Ray Train when ``job.ray.enabled``), logging config, metrics and the
    translator (an MLflow model) to one MLflow run (FAILED if training fails)."""
    job = durable_outputs(job)
    with job_run(job.tracking, tags={"job": "train_translation"}) as run:
        if run is not None:
            run.log_config(job)
            print(f"MLflow run {run.run_id} ({redact_uri(run.tracking_uri)})", flush=True)
        if job.ray.enabled:
            from lifelong.experiments.translation.on_ray import train_translation_on_ray

            result = train_translation_on_ray(job, run.run_id if run else None,
                                              run.tracking_uri if run else None, progress)
        else:
            result = train_translation(job, logger=run, progress=progress)
        print(f"trained {result.steps} steps in {result.wall_s:.0f} s "
              f"({result.sentences_per_s:.0f} sentences/s); model: {result.checkpoint}")
        if run is not None:
            run.set_tags(result.memory_tags)
            run.log_metrics({metrics.TRAIN_STEPS: result.steps,
                             metrics.TRAIN_WALL_S: result.wall_s}, step=result.steps)
            log_translator_model(run, result.checkpoint, job.tracking.register_as)
    return result


def load_test_sets(split: str, root: str | None = None, progress: bool = True,
                   out=None) -> dict[str, Multi30kSplit]:
    """The split(s) an evaluation translates: ``split`` itself, or with ``all`` each official
    test set that is found or can be downloaded (one missing is named on ``out`` and skipped).

    Raises:
        ConfigError: Unknown split.
        DataError: ``split`` (with ``all``: every test set) is missing and cannot be had.
        CorruptArchiveError: A file is not UTF-8 gzip text or has the wrong number of lines.
    """
    if split != ALL_SPLITS:
        return {split: load_multi30k(split, root=root, progress=progress)}
    found, missing = {}, []
    for name in TEST_SPLITS:
        try:
            found[name] = load_multi30k(name, root=root, progress=progress)
        except CorruptArchiveError:
            raise  # present but damaged: never skipped silently
        except DataError as exc:
            missing.append(f"{name} ({exc})")
    if not found:
        raise DataError("no Multi30k test set available: " + "; ".join(missing))
    for line in missing:
        print(f"skipped {line}", file=out or sys.stdout)
    return found


def evaluate_translation(job: TranslationEvalJob, progress: bool = True, out=None) -> dict:
    """Runs the evaluation: BLEU on each split (``job.split``, or the four test sets with
    ``all``), then the rare-word table on the first of them; returns the metrics it logged."""
    import torch

    out = out or sys.stdout
    if job.threads:
        torch.set_num_threads(job.threads)
    tm = TranslationModel.load(resolve_model_file(job.checkpoint, None, job.tracking.tracking_uri,
                                                  metrics.TRANSLATOR_ARTIFACT_DIR))
    tests = load_test_sets(job.split, job.data_root, progress, out)
    kind = "memory" if tm.memory is not None else "no memory"
    results, translations = {}, {}
    for name, data in tests.items():
        n = job.max_sentences or len(data)
        start = time.perf_counter()
        translations[name] = translate(tm, data.source[:n], beam=job.beam)
        score, signature = bleu(translations[name], data.target[:n])
        single = job.split != ALL_SPLITS
        results[metrics.EVAL_BLEU if single else metrics.bleu_metric(name)] = score
        results[metrics.EVAL_TRANSLATE_S] = (results.get(metrics.EVAL_TRANSLATE_S, 0.0)
                                             + time.perf_counter() - start)
        print(f"\nBLEU on {name} ({n} sentences, beam {job.beam}, {kind}): {score:.2f}\n"
              f"  {signature}", file=out)
    name, test = next(iter(tests.items()))
    table = _rare_word_table(job, tm, name, test, results, progress, out) \
        if job.rare_counts else []
    out.flush()
    with job_run(job.tracking, run_id=job.run_id, tags={"job": "evaluate_translation"}) as run:
        if run is not None:
            if job.run_id is None:
                run.log_config(job)
                run.set_tags({metrics.MODEL_URI_TAG: job.checkpoint})
            run.log_metrics(results)
            run.log_text(signature, metrics.BLEU_SIGNATURE)
            for name, hyps in translations.items():
                run.log_text("\n".join(hyps), metrics.translations_artifact(name))
            if table:
                run.log_table([{k: v for k, v in row.items() if k != "examples"}
                               for row in table], metrics.RARE_WORDS_TABLE)
                run.log_text(json.dumps(table, indent=1, ensure_ascii=False),
                             metrics.RARE_WORDS_JSON)
            print(f"\nlogged to MLflow run {run.run_id}", file=out)
    return results


def _rare_word_table(job: TranslationEvalJob, tm: TranslationModel, split: str,
                     test: Multi30kSplit, results: dict, progress: bool, out) -> list[dict]:
    """Prints the one-shot rare-word table on ``split``, adds its metrics to ``results`` and
    returns its rows."""
    train = load_multi30k("train", root=job.data_root, progress=progress)
    val = load_multi30k("val", root=job.data_root, progress=progress)
    print(f"\nOne-shot rare words on {split} (the asked test sentence translated without / "
          "after one showing of another pair holding the word):\n", file=out)
    print("| rare = seen in training at most | words | hit rate without | hit rate with | "
          "BLEU without | BLEU with |\n| --- | --- | --- | --- | --- | --- |", file=out)
    table = []
    for count in job.rare_counts:
        items = rare_word_items((train.source, train.target), (test.source, test.target),
                                (val.source, val.target), max_train_count=count)
        r = run_rare_words(tm, items, test.source, test.target)
        row = {"max_train_count": count, "words": len(items),
               "hit_without": r.hit_rate(r.without), "hit_with": r.hit_rate(r.with_shown),
               "bleu_without": r.bleu(r.without), "bleu_with": r.bleu(r.with_shown),
               "examples": [{"word": i.word, "shown_from": i.shown_from,
                             "translations": i.translations, "without": a, "with": b}
                            for i, a, b in zip(items, r.without, r.with_shown)]}
        table.append(row)
        print(f"| {count} | {len(items)} | {100 * row['hit_without']:.1f}% | "
              f"{100 * row['hit_with']:.1f}% | {row['bleu_without']:.2f} | "
              f"{row['bleu_with']:.2f} |", file=out)
        for key in RARE_HEADLINE:
            results[metrics.rare_word_metric(count, key)] = row[key]
    return table
