"""The online service's request parsing and checks (lifelong.service.protocol), its HTTP
answers to errors, its config, and the exactly-once learn protocol of the engine against
in-process durable shards: all without Ray."""

import base64
import json

import numpy as np
import pytest
import torch

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.errors import (BadRequestError, ConfigError, RequestConflictError,
                             RequestInProgressError, ShardUnavailableError)
from lifelong.service.answers import error_answer
from lifelong.service.config import ServeJob, ServeSettings
from lifelong.service.engine import Learned, ServiceEngine
from lifelong.service.protocol import (Limits, digest, parse_learn, parse_predict)
from lifelong.service.records import ABANDONED, RequestRecords
from lifelong.config import config_from_dict

IMAGES = Limits(payload_format="uint8[3,2]", num_values=10, max_examples=4, max_body_bytes=4096,
                max_neighbours=8, default_neighbours=3)
KEYS = Limits(payload_format="float32[4]", num_values=10, max_examples=4, max_body_bytes=4096)


def body(**data) -> bytes:
    return json.dumps(data).encode()


def b64(array: np.ndarray) -> str:
    return base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode()


def test_images_as_base64_bytes_or_nested_lists_parse_to_the_same_payloads():
    image = np.arange(6, dtype=np.uint8).reshape(3, 2)
    a = parse_predict(body(examples=[b64(image)]), IMAGES)
    b = parse_predict(body(examples=[image.tolist()], neighbours=2, candidates=[4, 1, 4]),
                      IMAGES)
    assert a.payloads.dtype == np.uint8 and a.payloads.shape == (1, 3, 2)
    np.testing.assert_array_equal(a.payloads, b.payloads)
    assert a.neighbours == 3 and a.candidates is None
    assert b.neighbours == 2 and b.candidates.tolist() == [1, 4]


def test_keys_parse_as_float32_little_endian():
    key = np.array([0.5, -1.0, 2.0, 3.25], dtype=np.float32)
    r = parse_learn(body(request_id="r-1", examples=[b64(key), key.tolist()], labels=[1, 2]),
                    KEYS)
    assert r.payloads.dtype == np.float32 and r.payloads.shape == (2, 4)
    np.testing.assert_array_equal(r.payloads[0], key)
    np.testing.assert_array_equal(r.payloads[1], key)
    assert r.labels.tolist() == [1, 2] and r.labels.dtype == np.int64
    assert r.digest == digest(r.payloads, r.labels)


@pytest.mark.parametrize("payload, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"request_id": "a", "examples": [[NaN, 1, 2, 3]], "labels": [1]}', 400, "NaN"),
    (b'{"request_id": "a", "examples": [[Infinity, 1, 2, 3]], "labels": [1]}', 400,
     "Infinity"),
    (body(request_id="a", examples=[[1, 2, 3]], labels=[1]), 400, "shape [4]"),
    (body(request_id="a", examples=[[1, 2, 3, "x"]], labels=[1]), 400, "numbers"),
    (body(request_id="a", examples=[[1e39, 2, 3, 4]], labels=[1]), 400, "finite"),
    (body(request_id="a", examples=[b64(np.zeros(3, np.float32))], labels=[1]), 400,
     "12 bytes"),
    (body(request_id="a", examples=["***"], labels=[1]), 400, "base64"),
    (body(request_id="a", examples=[b64(np.array([np.nan, 0, 0, 0], np.float32))],
          labels=[1]), 400, "NaN"),
    (body(request_id="a", examples=[[1, 2, 3, 4]], labels=[10]), 400, "outside"),
    (body(request_id="a", examples=[[1, 2, 3, 4]], labels=[-1]), 400, "outside"),
    (body(request_id="a", examples=[[1, 2, 3, 4]], labels=[1.5]), 400, "integer"),
    (body(request_id="a", examples=[[1, 2, 3, 4]], labels=[True]), 400, "integer"),
    (body(request_id="a", examples=[[1, 2, 3, 4]], labels=[1, 2]), 400, "one per example"),
    (body(request_id="a", examples=[], labels=[]), 400, "non-empty"),
    (body(request_id="", examples=[[1, 2, 3, 4]], labels=[1]), 400, "request_id"),
    (body(request_id="a/b", examples=[[1, 2, 3, 4]], labels=[1]), 400, "request_id"),
    (body(request_id=7, examples=[[1, 2, 3, 4]], labels=[1]), 400, "request_id"),
    (body(examples=[[1, 2, 3, 4]], labels=[1]), 400, "missing keys ['request_id']"),
    (body(request_id="a", examples=[[1, 2, 3, 4]], labels=[1], extra=1), 400, "unknown keys"),
    (body(request_id="a", examples=[[1, 2, 3, 4]] * 5, labels=[1] * 5), 413, "5 examples"),
    (b" " * 5000, 413, "5000 bytes"),
])
def test_bad_learn_requests_are_refused_with_a_clear_message(payload, status, words):
    with pytest.raises(BadRequestError) as info:
        parse_learn(payload, KEYS)
    assert info.value.status == status
    assert words in str(info.value)


@pytest.mark.parametrize("data, words", [
    ({"examples": [[[0, 1], [2, 3], [4, 256]]]}, "[0, 255]"),
    ({"examples": [[[0, 1], [2, 3], [4, 5.5]]]}, "[0, 255]"),
    ({"examples": [[[0, 1], [2, 3]]]}, "shape [3, 2]"),
    ({"examples": [5]}, "base64 string or a JSON array"),
    ({"examples": [[[0, 1], [2, 3], [4, 5]]], "neighbours": 9}, "neighbours"),
    ({"examples": [[[0, 1], [2, 3], [4, 5]]], "candidates": [11]}, "outside"),
    ({"examples": [[[0, 1], [2, 3], [4, 5]]], "candidates": []}, "non-empty"),
    ({"images": []}, "unknown keys"),
])
def test_bad_predict_requests_are_refused(data, words):
    with pytest.raises(BadRequestError) as info:
        parse_predict(body(**data), IMAGES)
    assert info.value.status == 400 and words in str(info.value)


def test_errors_map_to_http_status_codes_with_retry_after_for_outages():
    assert error_answer(BadRequestError("x", status=413), 2)[0] == 413
    assert error_answer(RequestConflictError("x"), 2)[0] == 409
    for exc in (ShardUnavailableError("down"), RequestInProgressError("busy")):
        status, payload, headers = error_answer(exc, 2)
        assert status == 503 and headers == {"Retry-After": "2"}
        assert payload["error"] == type(exc).__name__ and payload["retry_after_s"] == 2
    assert error_answer(RuntimeError("boom"), 2)[0] == 500


def test_serve_config_is_validated_and_loopback_by_default():
    assert ServeSettings().host == "127.0.0.1"
    with pytest.raises(ConfigError, match="serve.max_replicas"):
        config_from_dict(ServeJob, {"serve": {"min_replicas": 3, "max_replicas": 2}})
    with pytest.raises(ConfigError, match="serve.payload_format"):
        config_from_dict(ServeJob, {"serve": {"payload_format": "utf-8"}})
    with pytest.raises(ConfigError, match="unknown key serve.prot"):
        config_from_dict(ServeJob, {"serve": {"prot": 1}})
    job = config_from_dict(ServeJob, {})
    assert job.payload_format(16) == "float32[16]"
    with pytest.raises(ConfigError, match="needs an encoder"):
        config_from_dict(ServeJob, {"serve": {"payload_format": "uint8[28,28]"}}) \
            .payload_format(16)


# ------------------------------------------------------------------- the learn protocol
D = 4


@pytest.fixture
def engine(tmp_path):
    spec = MemorySpec(name="served", key_dim=D, num_slots=64, num_values=10, shards=2,
                      choose_k=8, age_noise=0.0, storage=str(tmp_path / "mem"))
    memory = ShardedMemory.local(spec, durable=True)
    records = RequestRecords(str(tmp_path / "records"))
    return ServiceEngine(memory, lambda p: torch.from_numpy(p.astype(np.float32)), records,
                         claim_timeout_s=0.5)


def learn_request(rid: str, keys, labels):
    data = body(request_id=rid, examples=np.asarray(keys, np.float32).tolist(), labels=labels)
    return parse_learn(data, KEYS)


def test_a_retried_learn_is_answered_from_the_record_and_written_once(engine):
    r = learn_request("req-1", np.eye(D)[:2], [3, 4])
    first = engine.learn([r])[0]
    assert isinstance(first, Learned) and not first.replayed
    assert [x["action"] for x in first.answer["results"]] == ["insert", "insert"]
    state = engine.memory.state_dict()
    again = engine.learn([learn_request("req-1", np.eye(D)[:2], [3, 4])])[0]
    assert again.replayed and again.answer == first.answer
    after = engine.memory.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in ("keys", "values"))
    assert engine.memory.occupancy() == 2
    conflict = engine.learn([learn_request("req-1", np.eye(D)[:2], [3, 5])])[0]
    assert isinstance(conflict, RequestConflictError)
    answer = engine.predict([parse_predict(body(examples=np.eye(D)[:2].tolist()), KEYS)])[0]
    assert [p["label"] for p in answer["predictions"]] == [3, 4]


def test_a_committed_batch_whose_send_failed_is_sent_again_by_the_retry_once(engine,
                                                                                 monkeypatch):
    shards = engine.memory.shards
    real = shards.call
    calls = {"n": 0}

    def failing(method, args):
        if method == "apply" and calls["n"] == 0:
            calls["n"] += 1
            real(method, args)  # applied at the shards, but the answer is lost
            raise ShardUnavailableError("the answer was lost")
        return real(method, args)

    monkeypatch.setattr(shards, "call", failing)
    r = learn_request("req-2", np.eye(D)[:3], [1, 2, 3])
    assert isinstance(engine.learn([r])[0], ShardUnavailableError)
    assert engine.memory.occupancy() == 3  # applied once, not answered
    retry = engine.learn([learn_request("req-2", np.eye(D)[:3], [1, 2, 3])])[0]
    assert isinstance(retry, Learned) and retry.replayed
    assert engine.memory.occupancy() == 3  # the retry was not applied again
    assert [x["slot"] for x in retry.answer["results"]] == \
        [x["slot"] for x in engine.learn([r])[0].answer["results"]]


def test_a_failed_plan_is_abandoned_and_the_retry_claims_the_id_anew(engine, monkeypatch):
    real = engine.encode
    monkeypatch.setattr(engine, "encode", lambda p: (_ for _ in ()).throw(
        ShardUnavailableError("down")))
    r = learn_request("req-3", np.eye(D)[:1], [7])
    assert isinstance(engine.learn([r])[0], ShardUnavailableError)
    claim = engine.records.current("req-3")
    assert engine.records.load_batch(claim.batch) == ABANDONED
    monkeypatch.setattr(engine, "encode", real)
    ok = engine.learn([r])[0]
    assert isinstance(ok, Learned) and not ok.replayed
    assert engine.records.current("req-3").generation == 1
    assert engine.memory.occupancy() == 1


def test_a_claim_in_progress_is_503_until_stale_then_taken_over(engine):
    r = learn_request("req-4", np.eye(D)[:1], [2])
    assert engine.records.claim("req-4", r.digest, "someone-elses-batch")
    assert isinstance(engine.learn([r])[0], RequestInProgressError)
    import time

    time.sleep(0.6)  # claim_timeout_s=0.5: its caller died before committing
    ok = engine.learn([r])[0]
    assert isinstance(ok, Learned) and engine.memory.occupancy() == 1
    assert engine.records.load_batch("someone-elses-batch") == ABANDONED


def test_two_replicas_learning_one_request_id_at_once_write_it_once(engine, tmp_path):
    """Two engines on the same shards and the same record (two replicas), the same request
    id sent to both at once, many times over: each id is written once; every answer is the
    recorded one or a 503 (in progress), and a retry then gets the recorded answer."""
    import threading

    other = ServiceEngine(engine.memory, engine.encode,
                          RequestRecords(engine.records.location), claim_timeout_s=60)
    rng = np.random.default_rng(0)
    for n in range(8):
        keys = rng.standard_normal((2, D)).astype(np.float32)
        labels = [n % 10, (n + 1) % 10]
        outcomes = [None, None]
        go = threading.Barrier(2)

        def send(i, eng):
            go.wait()
            outcomes[i] = eng.learn([learn_request(f"race-{n}", keys, labels)])[0]

        threads = [threading.Thread(target=send, args=(i, e))
                   for i, e in enumerate((engine, other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(isinstance(o, (Learned, RequestInProgressError)) for o in outcomes), outcomes
        final = engine.learn([learn_request(f"race-{n}", keys, labels)])[0]
        assert isinstance(final, Learned) and final.replayed
        assert all(o.answer == final.answer for o in outcomes if isinstance(o, Learned))
    status = engine.memory.status()
    assert sum(s["updates"] for s in status) == 8 * 2  # one batch per id, on both shards


def test_a_batch_a_dead_replica_left_unanswered_is_sent_by_the_sweep_once(engine,
                                                                            monkeypatch):
    """The replica sent its plan (the shards applied it) and died before recording the
    answers: the open mark stays; another replica's sweep sends the plan again (applied
    once), records the answers and closes it; a sweep finds nothing more to do."""
    real = engine.records.finish

    def dies(*args):
        raise SystemExit("the replica died here")

    monkeypatch.setattr(engine.records, "finish", dies)
    r = learn_request("req-5", np.eye(D)[:2], [5, 6])
    with pytest.raises(SystemExit):
        engine.learn([r])
    monkeypatch.setattr(engine.records, "finish", real)
    assert engine.memory.occupancy() == 2
    assert len(engine.records.open_batches()) == 1 and engine.records.answer("req-5") is None
    assert engine.recover(older_than_s=3600) == 0  # too young: its replica may be sending
    assert engine.recover(older_than_s=0) == 1
    assert engine.records.open_batches() == [] and engine.memory.occupancy() == 2
    retry = engine.learn([r])[0]
    assert retry.replayed and [x["label"] for x in retry.answer["results"]] == [5, 6]
    assert engine.recover(older_than_s=0) == 0
    assert sum(s["updates"] for s in engine.memory.status()) == 2  # once, on both shards


def test_a_learn_closes_its_batch_and_an_uncommitted_one_is_abandoned_by_the_sweep(engine):
    engine.learn([learn_request("req-6", np.eye(D)[:1], [1])])
    assert engine.records.open_batches() == []
    engine.records.open_batch("lost-before-commit")  # its replica died before the commit
    assert engine.recover(older_than_s=0) == 0
    assert engine.records.load_batch("lost-before-commit") == ABANDONED
    assert engine.records.open_batches() == []
