# voxgate — see README.md. `make run` serves on 127.0.0.1:8080; `make test` runs every test.
SHELL := /bin/bash
CARGO ?= cargo
# Builds go to target/ unless CARGO_TARGET_DIR says otherwise (.ci/run shares ~/.cache/voxgate).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: run test deps deps-test models models-run build build-dev bench bench-sip bench-agent fmt clippy

## Install what is missing, fetch models, build (release) and serve on the embedded defaults.
run: deps models-run build
	$(TARGET_DIR)/release/voxgate serve

## Install what is missing and run all tests (unit + end-to-end against the real binary).
test: deps-test models
	$(CARGO) build --workspace --tests --bins
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --workspace --no-fail-fast
else
	$(CARGO) test --workspace --no-fail-fast
endif

deps:
	@scripts/install-deps.sh run

deps-test:
	@scripts/install-deps.sh test

## Speech models and the 135M test LLM; models-run adds the agent's default LLM (Qwen2.5-0.5B, 491 MB).
models:
	@scripts/fetch-models.sh

models-run:
	@scripts/fetch-models.sh run

build:
	$(CARGO) build --release -p voxgate

build-dev:
	$(CARGO) build -p voxgate

## Load benchmark of concurrent /call sessions (see bench/README.md).
bench: deps-test models
	$(CARGO) build --release -p voxgate -p voxgate-bench
	bench/run-load.sh

## SIP load benchmark: SIPp calls with RTP both ways (see bench/README.md).
bench-sip: deps-test models
	$(CARGO) build --release -p voxgate -p voxgate-bench
	bench/run-sip-load.sh

## Seed-001 agent latency: caller stops -> first agent audio, 1/2/4 calls (see bench/README.md).
bench-agent: deps-test models-run
	$(CARGO) build --release -p voxgate -p voxgate-bench
	bench/run-agent-latency.sh

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets
