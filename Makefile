# The README's two commands are `make demo` and `make test`; both set themselves up.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export DS_ACCELERATOR ?= cpu

.PHONY: install test-deps lint test test-unit test-integration demo bench clean gpu-check

# Re-install only when the package metadata changes; an unchanged tree makes this a no-op.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# cn-clip's own deps pin lmdb==1.3.0 (no wheel for 3.11): take only its vocab, configs and reference code.
	$(BIN)/pip install -q --no-deps cn-clip==1.6.0
	touch $(STAMP)

install: $(STAMP)

# System packages the tests use: headless chromium (+ CJK fonts) renders the evaluator's report.html. Root with apt
# installs them (CI); elsewhere install them yourself (the Slurm tests install slurm-wlm/munge the same way).
test-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk; }; } || \
	  echo "note: chromium is not installed and cannot be installed here (need root + apt)"

# Lint and format are checked first (seconds), then the unit tests (a few minutes), then the multi-process and
# server tests: a mistake shows up at the cheapest stage that can see it.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint test-deps
	$(BIN)/python -m pytest -q -ra -m "not integration"
	$(BIN)/python -m pytest -q -ra -m integration

test-unit: install
	$(BIN)/python -m pytest -q -ra -m "not integration"

test-integration: install test-deps
	$(BIN)/python -m pytest -q -ra -m integration

# The whole stack on the embedded demo data: dataset -> shards -> 2-rank DeepSpeed training -> sharded evaluation.
demo: install
	$(BIN)/python tools/run_demo.py --out demo_out

bench: install
	$(BIN)/python benchmarks/run_all.py

# The GPU checks (tests/gpu) on a machine with CUDA GPUs: the real-size model under the real launchers with NCCL
# (6 launches, sized for 8 min on one H100; the 2-GPU checks skip on one). DS_ACCELERATOR=cuda overrides the CPU
# default exported above, which would put DeepSpeed on its CPU accelerator. Throughput and MFU: benchmarks/bench_gpu.py.
gpu-check: install
	DS_ACCELERATOR=cuda $(BIN)/python -m pytest -q -ra -m gpu tests/gpu

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
