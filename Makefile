# The two commands: `make demo` (the whole Kaggle loop on CPU) and `make test`.
# `make blend-demo`: a second recipe (configs/demo_b.yaml, 24 px) on the demo's folds, blended with the first
# (scripts/blend.py: each member's CV beside every blend's honest CV, runs/blend-demo/submission.csv validated).
# A quick smoke run: make blend-demo FOLDS=2 ARGS="epochs=1 folds.n_folds=2" (its own runs: rm -r runs/demo* first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo.yaml
FOLDS ?= 5
BLEND_CONFIG ?= configs/demo_b.yaml
ARGS ?=

.PHONY: setup demo blend-demo ssl-demo test lint bench docs

setup: $(STAMP)

# Reinstalls only when pyproject.toml changes; the editable install picks up code changes by itself.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/python scripts/prepare.py --config $(CONFIG)
	for k in $$(seq 0 $$(($(FOLDS) - 1))); do \
		$(BIN)/python scripts/train_fold.py --config $(CONFIG) --fold $$k --resume || exit $$?; \
	done
	mkdir -p submissions
	$(BIN)/python scripts/predict.py --config $(CONFIG) > submissions/demo.csv.tmp && mv submissions/demo.csv.tmp submissions/demo.csv
	$(BIN)/python scripts/report.py --config $(CONFIG)
	$(BIN)/python scripts/submit.py --config $(CONFIG) --dry-run submissions/demo.csv -m "make demo"
	@echo "submission: submissions/demo.csv (validated)   runs: runs/demo/fold*/ (metrics.csv, oof.csv, curves.png, confusion.png)"
	@echo "to submit it (a real competition's config): $(BIN)/python scripts/submit.py --config $(CONFIG) submissions/demo.csv -m \"MESSAGE\""

# Trains what is not trained yet (--resume), then blends; --force: the blend folder is rewritten each time.
blend-demo: setup
	for c in $(CONFIG) $(BLEND_CONFIG); do \
		$(BIN)/python scripts/prepare.py --config $$c $(ARGS) || exit $$?; \
		for k in $$(seq 0 $$(($(FOLDS) - 1))); do \
			$(BIN)/python scripts/train_fold.py --config $$c --fold $$k --resume $(ARGS) || exit $$?; \
		done; \
	done
	$(BIN)/python scripts/blend.py $(CONFIG) $(BLEND_CONFIG) --out runs/blend-demo --force $(ARGS)
	@echo "blend: runs/blend-demo/ (submission.csv validated, blend.png, blend.json, fold*/oof.csv)"

# The demo with half its training digits unlabelled (configs/demo_ssl.yaml): a baseline, a pseudo-label round
# (test + external images at confidence >= 0.5) and a distillation round, each on the baseline's folds.csv,
# their out-of-fold CV printed one after another. Quick: make ssl-demo SSL_FOLDS=2 ARGS="folds.n_folds=2 epochs=2"
SSL_CONFIG ?= configs/demo_ssl.yaml
SSL_FOLDS ?= 2
ssl-demo: setup
	$(BIN)/python scripts/prepare.py --config $(SSL_CONFIG) $(ARGS)
	for k in $$(seq 0 $$(($(SSL_FOLDS) - 1))); do \
		$(BIN)/python scripts/train_fold.py --config $(SSL_CONFIG) --fold $$k --resume $(ARGS) || exit $$?; \
	done
	$(BIN)/python scripts/pseudo.py --config $(SSL_CONFIG) --test --images data/demo_ssl/external \
		--min-confidence 0.5 --out runs/ssl_pseudo.csv $(ARGS)
	for r in "ssl_pseudo data.pseudo=runs/ssl_pseudo.csv" "ssl_distill distill.teacher=runs/ssl_base"; do \
		set -- $$r; mkdir -p runs/$$1; cp runs/ssl_base/folds.csv runs/ssl_base/folds.json runs/$$1/; \
		$(BIN)/python scripts/prepare.py --config $(SSL_CONFIG) out_dir=runs/$$1 $$2 $(ARGS) || exit $$?; \
		for k in $$(seq 0 $$(($(SSL_FOLDS) - 1))); do \
			$(BIN)/python scripts/train_fold.py --config $(SSL_CONFIG) --fold $$k --resume out_dir=runs/$$1 $$2 \
				$(ARGS) || exit $$?; \
		done; \
	done
	for r in ssl_base ssl_pseudo ssl_distill; do \
		echo "$$r:"; $(BIN)/python scripts/report.py --config $(SSL_CONFIG) out_dir=runs/$$r $(ARGS) | grep '^CV'; \
	done

# pytest-xdist: one worker per core, each test file on one worker (its module fixtures built once);
# 13 min on 2 cores where one process took ~18 (2026-11-30). `pytest -q tests/x.py` still runs serially.
test: setup
	$(BIN)/python -m pytest -q -n auto --dist loadfile

lint: setup
	$(BIN)/ruff check comp scripts tests

bench: setup
	$(BIN)/python benchmarks/run.py

# docs/config.md, generated from the schema (python -m comp.schema_doc: every key's type, default and comment);
# rerun after changing a key or its comment in comp/schema.py (tests/test_docs.py fails until then).
docs: setup
	$(BIN)/python -m comp.schema_doc > docs/config.md.tmp && mv docs/config.md.tmp docs/config.md
