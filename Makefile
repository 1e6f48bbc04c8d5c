# modeldeploy: the front door. `make demo` and `make test` set up everything they need.
SHELL := /bin/bash
export MD_T0 := $(shell date +%s)
export PATH := $(CURDIR)/.venv/bin:$(PATH)
PY := .venv/bin/python
STEP := hack/step
CLUSTER ?= modeldeploy
LOCALCLUSTER := $(PY) -m localcluster --name $(CLUSTER)

chart-crds: python
	@$(PY) hack/sync_chart_crds.py

api-reference: python
	@$(PY) hack/gen_api_reference.py

.PHONY: images converter-image chart-crds api-reference help setup demo-setup test-tools system python binaries triton demo test lint unit integration e2e cluster-up cluster-down cluster-status bench bench-setup bench-python bench-system

help:
	@echo "make demo    set up everything, start a local cluster, run the operator"
	@echo "make test    set up everything and run all test tiers (lint, unit, integration, e2e)"
	@echo "make bench   set up what benchmarks/serving.py needs (Flask, TorchServe + Java, torchvision, uvicorn) and run it"
	@echo "make lint | unit | integration | e2e | images | converter-image | cluster-up | cluster-down | cluster-status | bench-setup"

# `make demo` builds only what the demo needs; `make test` adds the test-only tools.
setup: demo-setup test-tools

demo-setup: system python binaries

system:
	@$(STEP) "system packages (apt, only the missing ones)" hack/setup-system.sh

python:
	@$(STEP) "python environment (.venv, with torch for model conversion tests)" env MD_EXTRAS=dev,test hack/setup-python.sh

binaries: python triton
	@$(STEP) "Kubernetes, etcd, kwok and helm binaries (built once from the Go module proxy, cached)" \
		$(PY) -m localcluster build
	@$(STEP) "MinIO, the S3-compatible store (built once from the Go module proxy, cached)" hack/triton/build-minio.sh

triton: python
	@$(STEP) "Triton Inference Server (from the nvidia-pytriton wheel, cached)" hack/triton/fetch.sh

test-tools: python
	@$(STEP) "system packages the tests need (Prometheus, Redis; only the missing ones)" hack/setup-system.sh --test
	@$(STEP) "argocd CLI, to test the Argo CD health check (built once from the Go module proxy, cached)" hack/build-argocd.sh
	@$(STEP) "Gateway API CRDs, to test the canary's HTTPRoute (from the Go module proxy, cached)" hack/fetch-gateway-api-crds.sh
	@$(STEP) "kube-router, to enforce NetworkPolicies on the real node in the tests (built once from the Go module proxy, cached)" \
		$(PY) -c "from tests.support import policy_controller; print(policy_controller.ensure())"

lint: python
	@$(STEP) "ruff" .venv/bin/ruff check operator hack tests benchmarks
	@$(STEP) "import-linter (layering rules)" .venv/bin/lint-imports

unit: python
	@$(STEP) "unit tests" .venv/bin/pytest tests/unit -q

integration: setup
	@$(STEP) "integration tests (real control plane)" .venv/bin/pytest tests/integration -q

e2e: setup
	@$(STEP) "end-to-end tests (real pods)" .venv/bin/pytest tests/e2e -q

# The images are built here, with progress, rather than silently inside the e2e tests' fixtures.
test: setup lint images converter-image
	@$(STEP) "all test tiers: unit, integration, e2e" .venv/bin/pytest tests -q -p no:cacheprovider

cluster-up: setup
	@$(STEP) "local cluster '$(CLUSTER)' up" $(LOCALCLUSTER) up

cluster-down: python
	@$(STEP) "local cluster '$(CLUSTER)' down" $(LOCALCLUSTER) down

cluster-status: python
	@$(LOCALCLUSTER) status

images: demo-setup
	@$(STEP) "serving image (Triton only) and operator image (operator + model-loader), built without Docker, only when their inputs change" \
		hack/images/ensure.sh
	@ls -lh out/*.tar | awk '{print "  " $$5 "  " $$9}'

converter-image: setup
	@$(STEP) "converter image: operator image + torch, for torchscript and pytorch-export models (~4.5 GB)" \
		hack/images/ensure.sh --converter
	@ls -lh out/modeldeploy-converter.tar | awk '{print "  " $$5 "  " $$9}'

demo: demo-setup
	@$(STEP) "demo" hack/demo.sh

# The serving benchmark's set-up: the bench extra (Flask, TorchServe, torchvision, uvicorn) on top of
# the test set, TorchServe's Java from Debian, Triton. No cluster: the benchmark runs local processes.
# The other benchmarks (control_plane, canary, autoscale, coldstart) use `make setup images` (docs/benchmarks.md).
bench-setup: bench-system bench-python triton

bench-system:
	@$(STEP) "system packages the benchmarks need (TorchServe's Java; only the missing ones)" hack/setup-system.sh --bench

bench-python:
	@$(STEP) "python environment with the bench extra (Flask, TorchServe, torchvision, uvicorn)" \
		env MD_EXTRAS=dev,test,bench hack/setup-python.sh

# BENCH_ARGS: e.g. BENCH_ARGS=--quick, or BENCH_ARGS="--models digits --levels 1 8 32".
BENCH_ARGS ?=
bench: bench-setup
	@$(STEP) "serving benchmark: Flask, TorchServe, onnxruntime + uvicorn, Triton, onnxruntime ceiling (out/serving.json)" \
		$(PY) benchmarks/serving.py --json out/serving.json $(BENCH_ARGS)
