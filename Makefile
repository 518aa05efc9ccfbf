# Two entry points on a fresh machine: `make run` (the main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test audit venv clean serve browser analyze

venv: $(STAMP)

# torch is pinned first so pip takes the local CPU wheel, never a CUDA build.
# scml-agents goes in last with --no-deps (see pyproject.toml, extra "experts").
# pyproject.toml pins fastapi < 0.151 and SQLAlchemy < 2.1 for Prefect 3.8's server (0.151 stopped reading
# a JSON null as a Body's default: the worker and `prefect deploy` get 422s; 0.155 dropped Body(**extra),
# so neither `prefect server start` nor the ephemeral API starts; 2.1's bulk inserts fail in the scheduler).
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps scml-agents==0.5.2
	touch $(STAMP)

# The main job: the whole pipeline on the default profile (Prefect's ephemeral API, no server needed):
# collect -> events -> tables -> training -> bundles -> evaluation; prints where the bundle and the evaluation are.
run: $(STAMP)
	$(BIN)/hrlxf run --profile default

audit: $(STAMP)
	$(BIN)/hrlxf audit

# Two test processes, each taking whole files (a file's tests share fixtures and run in order): the suite
# waits on servers, child commands and sleeps for much of its time, so one process leaves a core idle.
test: $(STAMP) browser
	$(BIN)/python -m pytest -x -p no:cacheprovider -n 2 --dist loadfile

# The analyzer's tests drive the distribution's headless Chromium (Playwright's own download is not reachable).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# A Prefect server on loopback (SQLite in DATA/prefect/home, the same history `hrlxf run` writes),
# the deployments of prefect.yaml and a process worker. Ctrl-C stops the worker (its own graceful
# stop can hang: it gets a second SIGINT, then SIGKILL), then the server, which runs in a session of
# its own so that it outlives the worker.
# UI and API: http://127.0.0.1:$(PREFECT_PORT). README: "Pipeline (Prefect)".
DATA ?= $(or $(HRLXF_DATA),data)
PREFECT_PORT ?= 4200
serve: $(STAMP)
	@mkdir -p $(DATA)/prefect/home
	@export PREFECT_HOME="$$(cd $(DATA)/prefect/home && pwd)" PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api \
	    PREFECT_SERVER_ANALYTICS_ENABLED=false; \
	setsid $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) & server=$$!; \
	trap 'kill $$server 2>/dev/null; wait $$server' EXIT; \
	for i in $$(seq 180); do \
	    $(BIN)/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" \
	        "$$PREFECT_API_URL" 2>/dev/null && break; sleep 1; done; \
	$(BIN)/prefect work-pool create hrlxf-process --type process --overwrite --no-prompt && \
	$(BIN)/prefect deploy --all --no-prompt || exit 1; \
	$(BIN)/prefect worker start --pool hrlxf-process --type process & worker=$$!; \
	trap 'kill -INT $$worker 2>/dev/null; sleep 5; kill -KILL $$worker 2>/dev/null' INT TERM; \
	wait $$worker

# The analyzer on 127.0.0.1 (read-only over the data root): http://127.0.0.1:$(ANALYZE_PORT)
ANALYZE_PORT ?= 8050
analyze: $(STAMP)
	$(BIN)/hrlxf analyze --data $(DATA) --port $(ANALYZE_PORT)

clean:
	rm -rf $(VENV) build *.egg-info
