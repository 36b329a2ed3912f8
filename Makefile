# Entry points; every target sets up the venv first (see scripts/setup.sh; PYTHON=... picks the interpreter).
VENV ?= .venv
export VENV
PY := $(VENV)/bin/python

.PHONY: setup setup-runtime demo test test-fast lint bench clean

# Everything: hvpose and its test extra (pytest, the reference libraries, ruff).
setup:
	@scripts/setup.sh test

# hvpose alone, for the demo: a fresh venv without the test extra installs faster (README, "Set-up").
setup-runtime:
	@scripts/setup.sh

# Both stages on the built-in people: the person detector, then the keypoint network, its backbone started from the
# detector's, evaluated on the detector's boxes (and on the ground-truth boxes for comparison). The two share one
# copy of the synthetic data and its ArrayRecord cache.
demo: setup-runtime
	$(PY) -m hvpose.main --config=configs/detector_demo.py --workdir=workdir/demo/detector \
		--config.data.synthetic.root=workdir/demo/demo_data --config.data.cache_dir=workdir/demo/tfds
	$(PY) -m hvpose.main --config=configs/demo.py --workdir=workdir/demo --config.init.backbone=workdir/demo/detector \
		--config.data.val.boxes=detector

# The suite in TEST_WORKERS processes (pytest-xdist), a test file per process at a time (module fixtures built
# once): much of it is single-threaded (XLA compiles, subprocess start-up, COCOeval), so two processes on two cores
# finish sooner than one. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests scripts benchmarks

bench: setup
	$(PY) benchmarks/voting.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/detector.py
	$(PY) benchmarks/posenet_cpu.py
	$(PY) benchmarks/search.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
