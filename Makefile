# MaskForge: `make demo` runs the main job on a generated sample, `make test` runs every test.
# Both call `make setup` first, which installs what is missing (idempotent).
SHELL := /bin/bash
PY := .venv/bin/python
QGIS_ENV := QT_QPA_PLATFORM=offscreen

.PHONY: setup test test-core test-qgis demo qgis bench bench-quality bench-label-loop bench-regularize gpu-check package clean

setup:
	@./scripts/setup.sh

test: setup
	$(MAKE) --no-print-directory test-core test-qgis

# Engine tests: no QGIS in the process; a passed test's folder goes when it ends (pytest.ini says why).
test-core:
	$(PY) -m pytest tests/core -p no:pytest_qgis -q -o tmp_path_retention_policy=failed

# QGIS tests: the real plugin in a real (offscreen) QgsApplication.
test-qgis:
	$(QGIS_ENV) $(PY) -m pytest tests/qgis -q

# The motivating story end to end through the plugin's Processing algorithms (demo_output/).
demo: setup
	$(QGIS_ENV) $(PY) scripts/demo.py

# Open QGIS on the demo's project with the plugin enabled.
qgis: setup
	qgis --nologo --project demo_output/maskforge_demo.qgz

# Figures as name=value lines (see README, Performance); on a CUDA machine the GPU check's too.
bench: setup
	$(PY) scripts/bench.py
	@if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then PYTHON=$(PY) scripts/gpu_check.sh; fi

# Fine-tuning quality on the real scenes and the camp, on test areas no training chip touches: chosen vs
# best threshold, ours vs torchvision's recipe, fine-tuning Banepa -> Dhaka, tiling agreement (name=value
# lines, bench_output/quality). CPU-sized; GPU=1 for one GPU (~15 min); QUICK=1 a smoke run;
# BUDGET=N training images per scene; SCENES=banepa,dhaka a subset.
bench-quality: setup
	$(PY) scripts/bench_quality.py $(if $(GPU),--gpu) $(if $(QUICK),--quick) $(if $(BUDGET),--budget $(BUDGET)) \
		$(if $(SCENES),--scenes $(SCENES))

# The labelling loop's value (issue 25): labels added where `suggest` ranks against labels added at random,
# retrained each round for the same budget, held-out F1 per round (README, Where to label next). CPU-sized:
# the camp's four rounds about 16-19 min per seed on 2 cores (both strategies), Banepa hours; QUICK=1 a smoke run; SCENES=camp; ROUNDS=N; BUDGET=N; SEEDS=0,1,2 (the means over seeds).
bench-label-loop: setup
	$(PY) scripts/bench_label_loop.py $(if $(QUICK),--quick) $(if $(SCENES),--scenes $(SCENES)) \
		$(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(BUDGET),--budget $(BUDGET)) $(if $(SEEDS),--seeds $(SEEDS))

# Regularize's methods against Banepa's and Atlanta's true outlines traced as 28x28 masks, and their speed
# on 100,000 outlines, as name=value lines (README, Regularize). CPU only; a few minutes on 2 cores.
bench-regularize: setup
	$(PY) scripts/bench_regularize.py

# The GPU figures alone (scripts/gpu_check.sh: no setup needed, only torch and torchvision).
gpu-check:
	scripts/gpu_check.sh

# The installable plugin zip, dist/maskforge-<version>.zip (standard library only).
package:
	python3 scripts/package.py

# PNGs of every dialog in a real QGIS window on a 1366x768 screen (screenshots/, git-ignored).
.PHONY: screenshots
screenshots: setup
	xvfb-run -a -s "-screen 0 1366x768x24" $(PY) scripts/screenshots.py

clean:
	rm -rf demo_output bench_output dist .pytest_cache .gpu_check_deps
