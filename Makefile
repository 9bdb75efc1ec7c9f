# The README's two commands are `make demo` and `make test`; both set themselves up.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export DS_ACCELERATOR ?= cpu

.PHONY: install test test-unit demo bench clean

# Re-install only when the package metadata changes; an unchanged tree makes this a no-op.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# cn-clip's own deps pin lmdb==1.3.0 (no wheel for 3.11): take only its vocab, configs and reference code.
	$(BIN)/pip install -q --no-deps cn-clip==1.6.0
	touch $(STAMP)

install: $(STAMP)
	@# Headless chromium (and CJK fonts) renders the evaluator's report.html in tests/integration/test_eval_distributed.py.
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk; }

test: install
	$(BIN)/python -m pytest -q -ra

test-unit: install
	$(BIN)/python -m pytest -q -ra -m "not integration"

# The whole stack on the embedded demo data: dataset -> shards -> 2-rank DeepSpeed training -> sharded evaluation.
demo: install
	$(BIN)/python tools/run_demo.py --out demo_out

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
