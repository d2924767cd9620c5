"""The translation jobs: ``lifelong train translation`` (in process or on Ray Train, logged to
MLflow) and ``lifelong evaluate translation`` (BLEU on a Multi30k test set, or on the four with
``split: all``, and the one-shot rare-word table of a checkpoint;
jobs/configs/evaluate_translation.yaml)."""

from __future__ import annotations

import json
import sys
import time

from tqdm.auto import tqdm

from lifelong import metrics
from lifelong.data import load_multi30k
from lifelong.data.multi30k import TEST_SPLITS, Multi30kSplit
from lifelong.errors import CorruptArchiveError, DataError
from lifelong.experiments.translation.config import ALL_SPLITS, TranslationEvalJob, TranslationJob
from lifelong.experiments.translation.diagnose import diagnose_item, diagnosis_table
from lifelong.experiments.translation.evaluate import bleu, translate
from lifelong.experiments.translation.heldout import HeldOutWord, held_out_pairs
from lifelong.experiments.translation.oneshot import (breakdown, heldout_items, rare_word_items,
                                                      run_rare_words)
from lifelong.experiments.translation.train import TranslationTrainResult, train_translation
from lifelong.models.checkpoint import TranslationModel
from lifelong.models.serving import GreedyTranslator, translator_input_example
from lifelong.runtime.config import durable_outputs
from lifelong.tracking import TrackedRun, job_run, log_model, redact_uri, resolve_model_file

# The sentences of the logged model's input example (its signature: ids in, ids out).
EXAMPLE_SENTENCES = ["A man is riding a bicycle.", "Two dogs play in the snow."]


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
    table, details = _rare_word_table(job, tm, name, test, results, progress, out) \
        if job.rare_counts else ([], {})
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
                run.log_table(table, metrics.RARE_WORDS_TABLE)
                run.log_text(json.dumps(details, indent=1, ensure_ascii=False),
                             metrics.RARE_WORDS_JSON)
            print(f"\nlogged to MLflow run {run.run_id}", file=out)
    return results


def _rare_word_table(job: TranslationEvalJob, tm: TranslationModel, split: str,
                     test: Multi30kSplit, results: dict, progress: bool,
                     out) -> tuple[list[dict], dict]:
    """Prints the one-shot rare-word tables (items asked from ``job.rare_pools``, ``split``
    for ``test``) and, with ``job.diagnose``, the diagnosis; adds their metrics to
    ``results``. Returns the rows (one per bound and group) and the details: every item's
    translations and the diagnosis table."""
    train = load_multi30k("train", root=job.data_root, progress=progress)
    val = load_multi30k("val", root=job.data_root, progress=progress)
    heldout = [HeldOutWord.from_list(row) for row in tm.meta.get("heldout", [])]
    removed = held_out_pairs(heldout)
    trained = ([s for i, s in enumerate(train.source) if i not in removed],
               [t for i, t in enumerate(train.target) if i not in removed])
    pools = {"test": (test.source, test.target), "val": (val.source, val.target)}
    table, details = [], {"items": {}, "diagnosis": None}
    for count in job.rare_counts:
        items = []
        for pool in job.rare_pools:
            if pool == "heldout":
                items += heldout_items(trained, (train.source, train.target), heldout, count)
            else:  # shown from the same split first, then the other one, then training
                others = [(name, pools[name]) for name in pools if name != pool]
                items += rare_word_items(trained, [(pool, pools[pool]), *others], count)
        bar = tqdm(total=len(items), desc=f"rare words (<= {count})", disable=not progress,
                   leave=False)
        r = run_rare_words(tm, items, progress=lambda: bar.update())
        bar.close()
        rows = r.rows(breakdown(items, tm.target_vocab))
        print(f"\nOne-shot rare words seen in training at most {count} times ({split} for "
              "test): the asked sentence translated without / after one showing of another "
              "pair holding the word; hit rates with 95% Wilson intervals\n", file=out)
        print("| items | words | hit rate without | hit rate with |\n| --- | --- | --- | --- |",
              file=out)
        for row in rows:
            if row["words"]:
                print(f"| {row['group']} | {row['words']} | {_rate(row, 'without')} | "
                      f"{_rate(row, 'with')} |", file=out)
        test_rows = [i for i, item in enumerate(items) if item.asked_from == "test"]
        for key, outputs in (("without", r.without), ("with", r.with_shown)):
            hits = r.hits(outputs)
            results[metrics.rare_word_metric(count, f"hit_{key}")] = (
                sum(hits[i] for i in test_rows) / len(test_rows) if test_rows else float("nan"))
            results[metrics.rare_word_metric(count, f"bleu_{key}")] = r.bleu(outputs)
        for row in rows:
            if row["group"] == "all":
                for key in ("words", "hit_without", "hit_with", "hit_with_low",
                            "hit_with_high"):
                    results[metrics.rare_word_metric(count, f"all.{key}")] = row[key]
        table += [{"max_train_count": count, **row} for row in rows]
        details["items"][str(count)] = [
            {"word": i.word, "asked_from": i.asked_from, "shown_from": i.shown_from,
             "train_count": i.train_count, "translations": i.translations,
             "without": a, "with": b} for i, a, b in zip(items, r.without, r.with_shown)]
        if job.diagnose and tm.memory is not None and count == max(job.rare_counts):
            diagnoses = [diagnose_item(tm, item, output)
                         for item, output in zip(items, r.with_shown)]
            details["diagnosis"] = diagnosis_table(diagnoses, tm.memory.choose_k)
            _print_diagnosis(details["diagnosis"], count, out)
    return table, details


def _rate(row: dict, key: str) -> str:
    return (f"{100 * row[f'hit_{key}']:.1f}% [{100 * row[f'hit_{key}_low']:.1f}, "
            f"{100 * row[f'hit_{key}_high']:.1f}]")


def _print_diagnosis(d: dict, count: int, out) -> None:
    print(f"\nWhy a shown word is not used (the {d['items']} items seen at most {count} times; "
          "teacher-forced on the asked reference, diagnose.py):\n", file=out)
    print("| first cause | items |\n| --- | --- |", file=out)
    for cause, share in d["causes"].items():
        print(f"| {cause} | {100 * share:.1f}% |", file=out)
    kinds = ("first piece", "later pieces")
    print("\n| at the translation's | " + " | ".join(kinds) + " |\n| --- | --- | --- |", file=out)
    for key in d[kinds[0]]:
        cells = [d[k][key] for k in kinds]
        text = [f"{c:.0f}" if key in ("pieces", "median rank") else f"{c:.3f}" for c in cells]
        print(f"| {key} | " + " | ".join(text) + " |", file=out)
