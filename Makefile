PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: venv data test demo bench fuzz clean distclean

venv: $(VENV)/.installed

# Reinstall only when pyproject.toml changes (the install is editable).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,demo]'
	touch $@

# Fashion-MNIST into .data/fashion-mnist (from the Debian package; never fails the build).
data:
	./tools/fetch_data.sh

test: venv data
	$(BIN)/python -m pytest -q --durations=15 -m "not fuzz" $(PYTEST_ARGS)

demo: venv data
	$(BIN)/python examples/demo.py

bench: venv
	$(BIN)/python -m bench

# Randomized compiled-vs-eager programs (tests/fuzz), far more of them than CI runs, fresh each time.
FUZZ_EXAMPLES ?= 5000
fuzz: venv
	TRACETORCH_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/fuzz -q -m fuzz $(PYTEST_ARGS)

# Build artifacts only; distclean also drops the venv and the data.
clean:
	rm -rf build dist .pytest_cache .hypothesis bench/results demo_out *.egg-info
	find . \( -path ./$(VENV) -o -path ./.git \) -prune -o \( -name __pycache__ -o -name '*.so' \) -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .data
