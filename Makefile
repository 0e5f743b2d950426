# StructViT-Lightning. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= $(shell command -v python3.11 || command -v python3)
VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
DEPS_HASH   := $(shell cat pyproject.toml | sha256sum | cut -c1-16)
DATA_ROOT   ?= ./data
RUNS        ?= runs
PYTEST_ARGS ?=
# the budget of the table in BENCHMARKS.md "Ablation": 5 epochs, 2 trainings at a time with one thread and one
# loader worker each (2 cores), the shuffled-frames control with one seed
ABLATION_ARGS ?= --epochs 5 --jobs 2 --threads 1 --num-workers 1 --control-seeds 0

# Dataset sources: every base URL / folder is a variable, so a mirror or a local copy can be used.
K400_BASE_URL ?= https://s3.amazonaws.com/kinetics/400
SSV2_DIR      ?= $(DATA_ROOT)/downloads/ssv2
SSV1_DIR      ?= $(DATA_ROOT)/downloads/ssv1
DIVING48_BASE_URL ?= http://www.svcl.ucsd.edu/projects/resound
DIVING48_DIR  ?= $(DATA_ROOT)/downloads/diving48
GYM_VIDEOS    ?= $(DATA_ROOT)/downloads/finegym/videos
GYM_ANNOTATIONS ?= $(DATA_ROOT)/downloads/finegym/annotations
IMAGENET_ARCHIVES ?= $(DATA_ROOT)/downloads/imagenet
PREP_ARGS     ?=# extra options for the prepare-* and doctor commands, e.g. PREP_ARGS=--transcode (ssv2)
INDEX         ?= $(DATA_ROOT)/synthetic
JOBS          ?= $(shell nproc)
MOTION_ARGS   ?=# extra options of python -m experiments.ablation_motion, e.g. --arms D0 D4-shifted --seeds 0 --jobs 1
CHAIN_ARGS    ?=# extra options of python -m experiments.imagenet_chain, e.g. --fast, --video-epochs 2, --quiet
FINETUNE_ARGS ?=# options of python -m experiments.finetune_from_plain; --source <a D = 0 checkpoint of make ablation-synthetic> is required
DEVICE        ?= cuda# gpu-check: cuda (the real check) or cpu (its dry run, tiny shapes)
GPU_CHECK_ARGS ?=# extra options of python -m benchmarks.gpu_check, e.g. --only tests,cli or --work DIR

.PHONY: help install test test-fast lint format demo demo-chain prepare-synthetic prepare-k400 prepare-ssv2 prepare-ssv1 \
        prepare-diving48 prepare-gym prepare-folder prepare-imagenet prepare-synthetic-images doctor bench bench-quick bench-gpu gpu-check ablation-synthetic ablation-motion \
        finetune-from-plain export-speed tensorboard clean

help: ## List every target with one line each
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-20s %s\n", $$1, $$2}' \
		| sed -e 's|$$(DATA_ROOT)|$(DATA_ROOT)|g' -e 's|$$(RUNS)|$(RUNS)|g' -e 's|$$(NAME)|$(or $(NAME),custom)|g'

install: ## Create .venv and install the project with its dev, export and torchcodec extras (no-op when pyproject.toml is unchanged)
	@if [ -f "$(STAMP)" ] && [ "$$(cat $(STAMP))" = "$(DEPS_HASH)" ]; then \
		echo "install: $(VENV) is current"; \
	else \
		set -e; \
		[ -x "$(PY)" ] || $(PYTHON) -m venv $(VENV); \
		$(PY) -m pip install --quiet --upgrade pip; \
		$(PY) -m pip install --quiet -e '.[dev,export,torchcodec,imagenet]'; \
		echo "$(DEPS_HASH)" > $(STAMP); \
		echo "install: $(VENV) ready"; \
	fi

PYTEST_WORKERS ?= 2# pytest-xdist workers; each test file stays on one worker (--dist loadfile)

test: install ## Run the whole test suite on PYTEST_WORKERS workers (installs first); non-zero exit on any failure
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

test-fast: install ## Run the test suite without the slow end-to-end tests
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: install ## Check the code with ruff (lint rules and formatting) and the import contracts (lint-imports)
	$(VENV)/bin/ruff check src data_prep benchmarks experiments tests
	$(VENV)/bin/ruff format --check src data_prep benchmarks experiments tests
	$(VENV)/bin/lint-imports

format: install ## Format the code with ruff
	$(VENV)/bin/ruff format src data_prep benchmarks experiments tests

demo: install ## The embedded default end to end: generate the synthetic benchmark, train structvit_xs, test, report
	$(PY) -m src.demo --data-root $(DATA_ROOT) --runs $(RUNS) $(DEMO_ARGS)

demo-chain: install ## The paper's three stages on a CPU: image benchmark as ILSVRC2012 archives -> prepare -> image fit/test -> video fine-tune beside one from scratch (~6 min)
	$(PY) -m experiments.imagenet_chain --data-root $(DATA_ROOT) --runs $(RUNS) $(CHAIN_ARGS)

prepare-synthetic: install ## Generate the synthetic motion benchmark into $(DATA_ROOT)/synthetic (cached)
	$(PY) -m data_prep.synthetic --out $(DATA_ROOT)/synthetic --workers $(JOBS)

prepare-synthetic-images: install ## Generate the embedded image benchmark (6 shape/texture classes, ImageNet layout) into $(DATA_ROOT)/synthetic_images (cached)
	$(PY) -m data_prep.synthetic_images --out $(DATA_ROOT)/synthetic_images $(PREP_ARGS)

prepare-imagenet: install ## Extract ImageNet-1k from the 3 ILSVRC2012 archives in IMAGENET_ARCHIVES into $(DATA_ROOT)/imagenet and check every image (resumable)
	$(PY) -m data_prep.imagenet --archives $(IMAGENET_ARCHIVES) --out $(DATA_ROOT)/imagenet --workers $(JOBS) $(PREP_ARGS)

prepare-k400: install ## Download (resumable) and index Kinetics-400 from K400_BASE_URL into $(DATA_ROOT)/k400
	$(PY) -m data_prep.kinetics --out $(DATA_ROOT)/k400 --base-url $(K400_BASE_URL) --workers $(JOBS) $(PREP_ARGS)

prepare-ssv2: install ## Extract and index Something-Something V2 from SSV2_DIR into $(DATA_ROOT)/ssv2
	$(PY) -m data_prep.ssv2 --source $(SSV2_DIR) --out $(DATA_ROOT)/ssv2 --workers $(JOBS) $(PREP_ARGS)

prepare-ssv1: install ## Extract and index Something-Something V1 (JPEG frames) from SSV1_DIR into $(DATA_ROOT)/ssv1
	$(PY) -m data_prep.ssv1 --source $(SSV1_DIR) --out $(DATA_ROOT)/ssv1 --workers $(JOBS) $(PREP_ARGS)

prepare-diving48: install ## Download/extract and index Diving-48 (V2 labels) into $(DATA_ROOT)/diving48
	$(PY) -m data_prep.diving48 --source $(DIVING48_DIR) --base-url $(DIVING48_BASE_URL) --out $(DATA_ROOT)/diving48 --workers $(JOBS) $(PREP_ARGS)

prepare-gym: install ## Trim FineGym events/elements from GYM_VIDEOS with GYM_ANNOTATIONS into $(DATA_ROOT)/gym99 and gym288
	$(PY) -m data_prep.finegym --videos $(GYM_VIDEOS) --annotations $(GYM_ANNOTATIONS) --out $(DATA_ROOT) --workers $(JOBS) $(PREP_ARGS)

# prepare-folder: plain assignments, so only the command line sets them (WSL puts the host name in $NAME);
# an unset SRC stops make before anything runs
SRC  =
NAME = custom
SRC_UNSET = prepare-folder: set SRC to the folder of your videos (one folder per class), e.g. make prepare-folder SRC=/videos/mine DATA_ROOT=./data [NAME=custom]; see docs/custom-data.md
$(if $(filter prepare-folder,$(MAKECMDGOALS)),$(if $(strip $(SRC)),,$(error $(SRC_UNSET))))
prepare-folder: install ## Index your own videos (SRC/<class>/<video> or SRC/{train,val,test}/<class>/...) into $(DATA_ROOT)/$(NAME)
	$(PY) -m data_prep.folder --src "$(SRC)" --out "$(DATA_ROOT)/$(NAME)" --workers $(JOBS) $(PREP_ARGS)

doctor: install ## Probe every video of INDEX in subprocesses; write quarantine.txt and a summary
	$(PY) -m data_prep.doctor $(INDEX) --workers $(JOBS) $(PREP_ARGS)

bench: install ## Run the CPU benchmark set (under 15 min); JSON in benchmarks/results/, tables for BENCHMARKS.md
	$(PY) -m benchmarks.run --suite cpu --doc BENCHMARKS.md

bench-quick: install ## Run a quick benchmark subset (about 3 min on 2 cores)
	$(PY) -m benchmarks.run --suite quick

bench-gpu: install ## Run the GPU benchmark set (CUDA, flash attention, bf16)
	$(PY) -m benchmarks.run --suite gpu --doc BENCHMARKS.md

gpu-check: install ## The GPU check (<= 8 min, one H100/H200): CUDA tests, CLI fit+test (bf16, ddp/NCCL), benchmarks; DEVICE=cpu: dry run (< 2 min)
	$(PY) -m benchmarks.gpu_check --device $(DEVICE) $(GPU_CHECK_ARGS)

ablation-synthetic: install ## Table 1a on the synthetic benchmark: D in {0,1,4} x 3 seeds + frame-shuffle control
	$(PY) -m experiments.ablation_synthetic --data-root $(DATA_ROOT) --runs $(RUNS)/ablation --doc BENCHMARKS.md $(ABLATION_ARGS)

ablation-motion: install ## Motion-only ablation: random-dot kinematograms, pure-attention model, D x filter init x 3 seeds
	$(PY) -m experiments.ablation_motion --data-root $(DATA_ROOT) --doc BENCHMARKS.md $(MOTION_ARGS)

finetune-from-plain: install ## StructSA (D = 4) fine-tuned from a trained plain-attention structvit_xs, per filter start: step-0 gap and curve
	$(PY) -m experiments.finetune_from_plain --data-root $(DATA_ROOT) --doc BENCHMARKS.md $(FINETUNE_ARGS)

export-speed: install ## Time per clip on CPU of eager PyTorch vs onnxruntime vs TorchScript (structvit_xs, structvit_s); BENCHMARKS.md "Export"
	$(PY) -m benchmarks.export_speed --doc BENCHMARKS.md

tensorboard: install ## Open TensorBoard on the runs folder ($(RUNS))
	$(VENV)/bin/tensorboard --logdir $(RUNS) --bind_all

clean: ## Remove the virtual environment and caches (keeps data and runs)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
