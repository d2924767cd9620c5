"""The online service for real (issue 20): one local Ray with Serve for the module, two
applications on one HTTP proxy (loopback, a free port): ``/img`` serves an Omniglot memory
through the fixture encoder (tests/data/serve_encoder.pt, trained on the background
characters only by tests/data/train_serve_encoder.py), ``/vec`` a memory of float32[16]
keys. Every call is real HTTP (``requests``) against real shard actors with durable files."""

import base64
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from lifelong.config import config_from_dict
from lifelong.data import load_omniglot
from lifelong.service.config import ServeJob

pytestmark = pytest.mark.ray

ENCODER = Path(__file__).resolve().parents[1] / "data" / "serve_encoder.pt"
RAY_TEMP = "/tmp/ray-serve"
D, VEC_VALUES, VEC_SLOTS, MAX_EXAMPLES = 16, 1000, 1024, 8
CLASSES, WAY = 50, 5


@pytest.fixture(scope="module")
def service(tmp_path_factory, free_ports):
    """(base URL of /img, base URL of /vec, memory storage): both apps started once."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from lifelong.service.launch import start_service

    storage = str(tmp_path_factory.mktemp("memories"))
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=RAY_TEMP, namespace="lifelong",
             log_to_driver=False)
    port = free_ports()
    common = {"port": port, "num_cpus": 0, "min_replicas": 1, "max_replicas": 1,
              "shard_timeout_s": 3.0, "max_examples": MAX_EXAMPLES, "max_body_bytes": 65536,
              "batch_wait_timeout_s": 0.01}
    img = config_from_dict(ServeJob, {
        "serve": {**common, "name": "img", "route_prefix": "/img"},
        "shared_memory": {"name": "serve-omniglot", "storage": storage, "num_slots": 4096,
                          "shards": 2, "num_values": 659, "num_cpus": 0.25},
        "encoder": {"checkpoint": str(ENCODER)}})
    vec = config_from_dict(ServeJob, {
        "serve": {**common, "name": "vec", "route_prefix": "/vec",
                  "payload_format": f"float32[{D}]"},
        "shared_memory": {"name": "serve-vectors", "storage": storage, "num_slots": VEC_SLOTS,
                          "shards": 2, "num_values": VEC_VALUES, "num_cpus": 0.25,
                          "snapshot_every": 25}})
    try:
        img_url = start_service(img)
        vec_url = start_service(vec)
        yield img_url, vec_url, storage
    finally:
        serve.shutdown()
        ray.shutdown()


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def post(url: str, **data) -> requests.Response:
    return requests.post(url, json=data, timeout=60)


def test_health_and_status_name_the_memory_and_the_encoder(service):
    img, vec, _ = service
    assert requests.get(f"{img}/healthz", timeout=30).json()["status"] == "ok"
    status = requests.get(f"{img}/status", timeout=30).json()
    assert status["memory"] == "serve-omniglot" and len(status["shards"]) == 2
    assert status["encoder"]["payload_format"] == "uint8[28,28]"
    assert status["encoder"]["checkpoint"] == str(ENCODER)
    assert len(status["encoder"]["sha256"]) == 64
    assert requests.get(f"{vec}/status", timeout=30).json()["encoder"]["kind"] == "none"


def test_one_shot_over_http_on_evaluation_characters(service):
    """50 evaluation characters (unrotated, never trained on), in 10 groups of 5: each class
    is asked before it is learned (never its label: it was never written), then one drawing
    of each class of the group is learned (one /learn each), then another drawing of each is
    asked with the group's 5 labels as candidates (5-way 1-shot, the memory holding every
    class learned so far); the accuracy over the 50 must be >= 90%."""
    img, _, _ = service
    images = load_omniglot("evaluation", progress=False).images  # [659, 20, 28, 28]
    rng = np.random.default_rng(0)
    classes = rng.choice(images.shape[0], CLASSES, replace=False)
    right = 0
    for g in range(CLASSES // WAY):
        group = [int(c) for c in classes[g * WAY:(g + 1) * WAY]]
        drawings = {c: rng.choice(images.shape[1], 2, replace=False) for c in group}
        before = post(f"{img}/predict", examples=[b64(images[c, drawings[c][1]])
                                                  for c in group])
        assert before.status_code == 200, before.text
        for c, p in zip(group, before.json()["predictions"]):
            assert p["label"] != c  # never learned: the memory cannot answer it
        for c in group:
            learned = post(f"{img}/learn", request_id=f"oneshot-{c}",
                           examples=[images[c, drawings[c][0]].tolist()], labels=[c])
            assert learned.status_code == 200, learned.text
        after = post(f"{img}/predict", examples=[b64(images[c, drawings[c][1]]) for c in group],
                     candidates=group, neighbours=3)
        assert after.status_code == 200, after.text
        right += sum(p["label"] == c for c, p in zip(group, after.json()["predictions"]))
    accuracy = right / CLASSES
    print(f"\none-shot over HTTP: {right}/{CLASSES} = {100 * accuracy:.1f}% (5-way candidate "
          "sets, one /learn of one drawing per class)")
    assert accuracy >= 0.9


def memory_state(storage: str, name: str = "serve-vectors"):
    from lifelong.distributed import attach

    mem = attach(name, storage)
    state = mem.state_dict()
    clocks = [s["clock"] for s in mem.status()]
    return state, clocks


def same_state(a, b) -> bool:
    (sa, ca), (sb, cb) = a, b
    return ca == cb and all(np.array_equal(sa[k].numpy(), sb[k].numpy())
                            for k in ("keys", "values", "ages"))


def test_a_retried_learn_writes_once_and_gets_the_same_answer(service):
    _, vec, storage = service
    keys = np.random.default_rng(1).standard_normal((3, D)).astype(np.float32)
    first = post(f"{vec}/learn", request_id="retry-1", examples=[b64(k) for k in keys],
                 labels=[900, 901, 902])
    assert first.status_code == 200, first.text
    assert first.headers["X-Lifelong-Replayed"] == "false"
    before = memory_state(storage)
    occupancy = requests.get(f"{vec}/status", timeout=30).json()["occupancy"]
    again = post(f"{vec}/learn", request_id="retry-1", examples=[b64(k) for k in keys],
                 labels=[900, 901, 902])
    assert again.status_code == 200 and again.headers["X-Lifelong-Replayed"] == "true"
    assert again.json() == first.json()
    assert same_state(before, memory_state(storage))
    assert requests.get(f"{vec}/status", timeout=30).json()["occupancy"] == occupancy
    other = post(f"{vec}/learn", request_id="retry-1", examples=[b64(k) for k in keys],
                 labels=[900, 901, 903])
    assert other.status_code == 409 and "used before" in other.json()["message"]
    assert same_state(before, memory_state(storage))


def test_bad_requests_get_4xx_with_a_message_and_change_nothing(service):
    _, vec, storage = service
    good = np.zeros(D, np.float32).tolist()
    nan = np.full(D, np.nan, np.float32)
    before = memory_state(storage)
    bad = [
        ("POST", "/learn", b"{not json", 400),
        ("POST", "/learn", b'{"request_id": "b", "examples": [[NaN]], "labels": [1]}', 400),
        ("POST", "/learn", {"request_id": "b1", "examples": [good[:-1]], "labels": [1]}, 400),
        ("POST", "/learn", {"request_id": "b2", "examples": [b64(nan)], "labels": [1]}, 400),
        ("POST", "/learn", {"request_id": "b3", "examples": [good], "labels": [VEC_VALUES]},
         400),
        ("POST", "/learn", {"request_id": "b4", "examples": [good], "labels": [1, 2]}, 400),
        ("POST", "/learn", {"request_id": "b 5", "examples": [good], "labels": [1]}, 400),
        ("POST", "/learn", {"request_id": "b6", "examples": [good] * (MAX_EXAMPLES + 1),
                            "labels": [1] * (MAX_EXAMPLES + 1)}, 413),
        ("POST", "/predict", b"x" * 70000, 413),
        ("POST", "/predict", {"examples": [good], "candidates": [-1]}, 400),
        ("POST", "/predict", {"examples": "abc"}, 400),
        ("GET", "/learn", None, 405),
        ("POST", "/nowhere", {}, 404),
    ]
    for method, route, payload, status in bad:
        kwargs = {"data": payload} if isinstance(payload, bytes) else \
            {"json": payload} if payload is not None else {}
        answer = requests.request(method, f"{vec}{route}", timeout=30, **kwargs)
        assert answer.status_code == status, (route, payload if not isinstance(payload, bytes)
                                              else payload[:40], answer.text)
        assert answer.json()["error"] and answer.json()["message"]
    assert same_state(before, memory_state(storage))


def test_the_serve_run_builder_serves_the_same_memory(service):
    """``serve run lifelong.service.launch:build_app config=... key=value``: Serve's CLI hands
    the builder its arguments as strings; the application attaches to the named memory."""
    from ray import serve

    from lifelong.service.launch import build_app

    _, vec, storage = service
    app = build_app({"config": str(Path(__file__).resolve().parents[2] / "jobs" / "configs"
                                   / "serve.yaml"),
                     "serve.name": "built", "serve.num_cpus": "0",
                     "serve.payload_format": f"float32[{D}]",
                     "shared_memory.name": "serve-vectors", "shared_memory.storage": storage})
    serve.run(app, name="built", route_prefix="/built")
    try:
        base = vec.rsplit("/", 1)[0]
        built = requests.get(f"{base}/built/status", timeout=30).json()
        assert built["memory"] == "serve-vectors" and built["service"] == "built"
        assert built["occupancy"] == requests.get(f"{vec}/status", timeout=30).json()["occupancy"]
    finally:
        serve.delete("built")


def test_a_killed_shard_loses_no_acknowledged_learn_and_gives_no_wrong_answer(service):
    """Four clients learn new keys (each label once) and ask known ones while shard 0 of the
    memory is killed (ray.kill by its handle; Ray restarts it from its files). A 503 is
    retried with the same request id; every acknowledged example is found afterwards, and no
    answer during the outage was wrong (503s and right answers only)."""
    import ray

    from lifelong.distributed import attach

    _, vec, storage = service
    acked, wrong, unavailable, errors = {}, [], [], []
    lock = threading.Lock()
    per_client, per_request = 12, 2

    def client(index: int) -> None:
        rng = np.random.default_rng(100 + index)
        try:
            for n in range(per_client):
                labels = [index * per_client * per_request + n * per_request + j
                          for j in range(per_request)]
                keys = rng.standard_normal((per_request, D)).astype(np.float32)
                for attempt in range(60):
                    r = post(f"{vec}/learn", request_id=f"kill-{index}-{n}",
                             examples=[b64(k) for k in keys], labels=labels)
                    if r.status_code != 503:
                        break
                    with lock:
                        unavailable.append("learn")
                    time.sleep(float(r.headers.get("Retry-After", 1)))
                assert r.status_code == 200, r.text
                with lock:
                    acked.update({lab: key for lab, key in zip(labels, keys)})
                    known = list(acked.items())[-4:]
                p = post(f"{vec}/predict", examples=[b64(k) for _, k in known])
                if p.status_code == 503:
                    with lock:
                        unavailable.append("predict")
                    continue
                assert p.status_code == 200, p.text
                for (lab, _), pred in zip(known, p.json()["predictions"]):
                    if pred["label"] != lab:
                        with lock:
                            wrong.append((lab, pred))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    while len(acked) < 12 and any(t.is_alive() for t in threads):
        time.sleep(0.05)
    handle = attach("serve-vectors", storage).shards.handles[0]
    pid = ray.get(handle.status.remote())["pid"]
    at_kill = len(acked)
    ray.kill(handle, no_restart=False)
    for t in threads:
        t.join(240)
    assert not errors, errors
    assert not wrong, wrong
    assert at_kill < len(acked)
    status = attach("serve-vectors", storage).status()
    assert status[0]["pid"] != pid  # shard 0 really was restarted
    labels = list(acked)
    for start in range(0, len(labels), MAX_EXAMPLES):
        chunk = labels[start:start + MAX_EXAMPLES]
        found = post(f"{vec}/predict", examples=[b64(acked[lab]) for lab in chunk])
        assert found.status_code == 200, found.text
        for lab, pred in zip(chunk, found.json()["predictions"]):
            assert pred["label"] == lab and pred["similarity"] > 0.999
    print(f"\nkilled shard 0 after {at_kill} acknowledged examples; {len(acked)} acknowledged "
          f"in all, all found afterwards; 503 answers during the outage: "
          f"{unavailable.count('learn')} learn, {unavailable.count('predict')} predict")
