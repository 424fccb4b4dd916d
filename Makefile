# Two commands set up and run everything: `make demo` (the whole method on synthetic data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test demo experiment sweep bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=64" wheel
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

test: install
	$(PY) -m pytest -q tests

demo: install
	$(VENV)/bin/vargface demo --out demo_out

# what distillation does: three seeds, equal budgets, the ablations, paired 95% intervals (about 20 minutes on 2 cores)
experiment: install
	$(VENV)/bin/vargface experiment distill --variants distillation --out experiment_out

# the gains against the training budget, RegularFace and label smoothing included (about 1.5 hours on 2 cores)
sweep: install
	$(VENV)/bin/vargface experiment distill --variants alpha20,kd_only,regularface,smoothing --budgets 150,600 --out sweep_out

bench: install
	$(PY) bench/infer.py
	$(PY) bench/loader.py
	$(PY) bench/train.py
	$(PY) bench/distill.py
	$(PY) bench/precision.py
	$(PY) bench/tar_at_far.py
	$(PY) bench/partial_fc.py
	$(PY) bench/ijb.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache demo_out experiment_out sweep_out bench_out
