# spine-node: `make run` and `make test` each do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup system-deps viewer run demo orthanc test test-fast demo-model demo-model-v2 benchmark clean

setup: $(STAMP)

# The virtual environment: torch pinned by constraints.txt, then a check that nnU-Net imports.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml scripts/check_install.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip wheel
	$(VENV)/bin/pip install -q -c constraints.txt -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	$(PY) scripts/check_install.py
	touch $(STAMP)

# Debian packages the tests use as real peers and validators (dcmtk, dicom3tools); needs root.
system-deps:
	bash scripts/install-system-deps.sh

# The DICOM node with its embedded defaults: SQLite and files under ./spine-node-data,
# the bundled demo model, AE title SPINENODE on port 11112 (SPINE_NODE_* variables override).
run: setup
	$(VENV)/bin/spine-node serve

# The offline pipeline on a phantom CT: DICOM series in, SEG + SR + summary.json out.
demo: setup
	$(VENV)/bin/spine-node phantom --out spine-node-data/demo --n 1 --seed 100000 --fov lumbar --format dicom
	$(VENV)/bin/spine-node process spine-node-data/demo --out spine-node-data/demo-out

# A local Orthanc (Debian package) on ports 8042/4242 that routes stable CT series to the node.
orthanc: setup system-deps
	$(PY) orthanc/local_orthanc.py --http-port 8042 --dicom-port 4242 --stable-age 5 --node SPINENODE@127.0.0.1:11112

# The prebuilt OHIF viewer pinned in viewer/package-lock.json, for tests/test_ohif_viewer.py (npm ci, no scripts run).
VIEWER_STAMP := viewer/node_modules/.installed
viewer: $(VIEWER_STAMP)

$(VIEWER_STAMP): viewer/package.json viewer/package-lock.json | system-deps
	cd viewer && nice npm ci --ignore-scripts --no-audit --no-fund
	touch $(VIEWER_STAMP)

test: setup system-deps viewer
	$(VENV)/bin/pytest -q

# Pure Python: no nnU-Net run (slow), no Orthanc, DCMTK, dicom3tools, dcmqi, PostgreSQL, Docker or hadolint
# (peer); SPINE_NODE_TEST_NO_PEERS=1 makes a test that starts one of those without the peer marker fail.
test-fast: setup
	SPINE_NODE_TEST_NO_PEERS=1 $(VENV)/bin/pytest -q -m "not slow and not peer"

# Train the demo model's recipe from scratch on this CPU (30 epochs, under an hour on 2 cores);
# the shipped weights had 132 epochs in three warm-started steps (README, "The demo model").
demo-model: setup
	$(VENV)/bin/spine-node train-demo --workdir spine-node-data/train-demo --out models/spine-phantom-demo

# The v2 recipe (issue 12): phantoms v2 (real VerSe shapes; needs ../shared/data), 2 mm, warm-started from
# v0.3.0 taken from git history. Not shipped (README): the bundle goes to spine-node-data, not models/.
demo-model-v2: setup
	$(PY) -m research.training_v2 --workdir spine-node-data/train-demo-v2 --out spine-node-data/spine-phantom-demo-v2

benchmark: setup
	$(PY) benchmarks/inference_cpu.py
	$(PY) benchmarks/process_cpu.py

clean:
	rm -rf $(VENV) spine-node-data .pytest_cache
