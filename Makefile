# `make demo` and `make test` each bootstrap .venv (Python 3.10+, pinned dependencies) and then do the whole job.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo demo-acc test bench clean

$(STAMP): pyproject.toml scripts/install_helm.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	bash scripts/install_helm.sh
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) jobs/train_adiff.py

# ACC Tables 2 and 3 in miniature (README "ACC Tables 2 and 3 in miniature"; benchmarks/RESULTS.md)
demo-acc: $(STAMP)
	$(PY) jobs/finetune_qwen2_audio.py --config jobs/configs/acc_table2_demo.yaml

# Two pytest workers, whole files each (module fixtures stay shared), in conftest's order (not xdist's
# most-tests-first): the ten-minute demo test starts at once on one worker while the other runs the rest.
# The page tests drive Debian's chromium through Selenium: installed here when missing (as helm is, above).
# --durations: the slowest tests are printed, to keep the whole under its 30-minute budget.
test: $(STAMP)
	bash scripts/install_chromium.sh
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=12

bench: $(STAMP)
	$(PY) benchmarks/bench_build.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_qwen.py

clean:
	rm -rf work .pytest_cache
