# Two commands: `make demo` (the method end to end on the bundled digits) and `make test`.
PY    ?= $(shell command -v python3.11 || command -v python3)
VENV  := .venv
BIN   := $(VENV)/bin
# torch is installed first so that a machine with local wheels uses them; override for other builds,
# e.g. make TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo base test bench venv clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

# the demo: stage 2 on the base that ships with the package (core/bases/tiny, its provenance.json says how it was
# made): 5 timestep groups, 25 fine-tune steps each (the control trains 125 steps more), group jobs two at a time
# (one thread each), the control on two one-thread DDP ranks, and FID/KID from 512 samples per model (the smallest n
# at which two evaluations of one model agree) with the preset's 25 respaced steps: at 10 steps the verdict against
# the control changed (bench/README.md, "The demo"). `stepadapt run --preset tiny` trains its own stage 1 first and
# uses the preset's settings: the full path.
DEMO ?= -S schedule.groups=5 -S finetune.steps=25 -S eval.fid_n=512 -S eval.loss_images=128 -S sample.steps=25
demo: venv
	$(BIN)/stepadapt run --base shipped --parallel 2 $(DEMO) --name demo-$$(date +%Y%m%d-%H%M%S)

# the shipped base again, from scratch (hours on 2 CPU cores): stage 1 of the tiny preset, evaluated at n = 1024,
# written to core/bases/tiny with its provenance (bench/ship_base.py)
BASE_STEPS ?= 6000
base: venv
	$(BIN)/stepadapt train --preset tiny --train-steps $(BASE_STEPS) --name tiny-base-$(BASE_STEPS)
	$(BIN)/stepadapt eval tiny-base-$(BASE_STEPS) --model base
	$(BIN)/python bench/ship_base.py --run tiny-base-$(BASE_STEPS)

# ruff first (lint, then format check): the style holds without a reviewer
test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=25

# every benchmark (hours on 2 CPU cores), then the tables in bench/README.md
bench: venv
	$(BIN)/python bench/training.py
	test -f runs/bench-tiny/models/progressive.pt || $(BIN)/stepadapt run --preset tiny --parallel 2 --name bench-tiny
	$(BIN)/python bench/sampling.py --run bench-tiny
	$(BIN)/python bench/listing.py --run bench-tiny
	$(BIN)/python bench/sampling.py --run bench-tiny --batch 256 --steps 20 --name sampling_tiny_b256
	test -f runs/bench-cifar10/models/progressive.pt || $(BIN)/stepadapt run bench/cifar10_timing.yaml --name bench-cifar10
	$(BIN)/python bench/sampling.py --run bench-cifar10 --steps 25 --name sampling_cifar10
	$(BIN)/python bench/two_stage.py
	$(BIN)/python bench/proxy_vs_baselines.py
	$(BIN)/python bench/metric_spread.py --run bench-tiny
	$(BIN)/python bench/progressive_vs_control.py --base-run bench-tiny
	$(BIN)/python bench/readme.py

clean:
	rm -rf $(VENV) .pytest_cache
