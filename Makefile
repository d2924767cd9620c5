# Two commands from a fresh clone: `make demo` and `make test` (see README.md).
# Everything is installed into .venv from a bare Python 3.11 with pip.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A CPU build of torch: pinned so pip takes the CPU wheel instead of a multi-gigabyte CUDA build.
# Elsewhere, add TORCH_INDEX=https://download.pytorch.org/whl/cpu to fetch the CPU wheel.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Real data: a local copy of Omniglot / Multi30k (official layout); the loaders download otherwise.
LIFELONG_DATA_DIR ?= $(abspath $(wildcard ../shared/data))
export LIFELONG_DATA_DIR
PYTEST_ARGS ?=

.PHONY: install demo test test-slow bench bench-sharded bench-huge bench-workers bench-stream bench-train-speed bench-serve retention stream monitor clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) jobs/demo.py

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/bench_memory.py

bench-sharded: install
	$(PY) benchmarks/bench_sharded.py

# 16M slots x 128 in 2 shards: exact float32, exact bfloat16 and IVF side by side (~20 min, ~14 GiB).
bench-huge: install
	$(PY) benchmarks/bench_huge.py --config benchmarks/configs/bench_huge.yaml

# 1 vs 2 Ray Train workers, life-long against a 2-shard memory (about 30 minutes on 2 cores).
bench-workers: install
	$(PY) benchmarks/bench_train_workers.py

# Episodic training per precision / channels_last / compile mode against the measured peak (~1 min).
bench-train-speed: install
	$(PY) benchmarks/bench_train_speed.py --config benchmarks/configs/bench_train_speed.yaml

# The online service over real HTTP (bounded load, predict + learn) against the memory's step (~1-2 min).
bench-serve: install
	$(PY) benchmarks/bench_serve.py --config benchmarks/configs/bench_serve.yaml

# The stream job against its floors (encoder alone, memory alone), same segments, one run.
bench-stream: install
	$(PY) benchmarks/bench_stream.py --checkpoint $(STREAM_CHECKPOINT)

# The life-long retention curve of a trained encoder (train first: `make demo` or the 1-hour run).
RETENTION_CHECKPOINT ?= runs/omniglot/encoder.pt
retention: install
	$(PY) jobs/evaluate_retention.py --checkpoint $(RETENTION_CHECKPOINT)

# 100,000 long-tailed Omniglot examples streamed into a named memory (prequential, exactly once);
# the encoder of `make demo` by default. Run it again: it resumes, and ends at once when done.
STREAM_CHECKPOINT ?= runs/demo/encoder.pt
STREAM_EXAMPLES ?= 100000
stream: install
	$(VENV)/bin/lifelong stream produce --to runs/stream/segments --examples $(STREAM_EXAMPLES) --if-empty
	$(PY) jobs/stream.py --source runs/stream/segments --checkpoint $(STREAM_CHECKPOINT) \
	    shared_memory.storage=runs/stream/memories stream.idle_timeout_s=0

# A Prometheus on 127.0.0.1:$(MONITOR_PORT) scraping every node of the Ray cluster whose head
# runs here (found through Ray's service-discovery file); Ctrl-C stops it. See README "Monitoring".
MONITOR_PORT ?= 9090
MONITOR_ARGS ?=
monitor: install
	$(VENV)/bin/lifelong monitor start --port $(MONITOR_PORT) $(MONITOR_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
