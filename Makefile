# MaskForge: `make demo` runs the main job on a generated sample, `make test` runs every test.
# Both call `make setup` first, which installs what is missing (idempotent).
SHELL := /bin/bash
PY := .venv/bin/python
QGIS_ENV := QT_QPA_PLATFORM=offscreen

.PHONY: setup test test-core test-qgis demo bench clean

setup:
	@./scripts/setup.sh

test: setup
	$(MAKE) --no-print-directory test-core test-qgis

# Engine tests: no QGIS in the process.
test-core:
	$(PY) -m pytest tests/core -p no:pytest_qgis -q

# QGIS tests: the real plugin in a real (offscreen) QgsApplication.
test-qgis:
	$(QGIS_ENV) $(PY) -m pytest tests/qgis -q

demo: setup
	$(QGIS_ENV) ./scripts/demo.sh

# Figures as name=value lines (see README, Performance).
bench: setup
	$(PY) scripts/bench.py

clean:
	rm -rf demo_output bench_output .pytest_cache
