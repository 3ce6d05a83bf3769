# sft-operator: every entry point a newcomer, CI and a developer need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# devtools/ (dev-only: control plane, nodes, demo, tiny model) runs from the checkout, never installed.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: lint docker demo prepare test unit integration training e2e images images-test images-test-cuda cuda-constraints venv provision cluster-up cluster-down run crd bench tiny clean

## demo: local control plane + a real node (kubelet + docker), the images built, `helm install` of the
## chart (the operator as a pod), then a tiny 2-node job in the trainer image to Succeeded
demo: venv provision docker
	$(PY) -m devtools.demo

## prepare: what the tiers need, the two slow ones side by side (on a fresh machine Kubernetes' build is
## CPU-bound, the images mostly downloads and unpacking), seconds warm
prepare: venv docker
	$(MAKE) --no-print-directory -j2 provision images

## test: every test tier (unit, integration on the real control plane, training, images, e2e) on four
## pytest-xdist workers: the e2e tier on two sharing the real stack, the other tiers beside them
## (tests/conftest.py). Most tests wait (one process: 46% of 2 cores busy in e2e, 30% in
## integration), so 4 workers on 2 cores. PYTEST_ARGS="-n 0": one process
PYTEST_ARGS ?= -n 4
test: prepare lint
	KUBEBUILDER_ASSETS="$$(scripts/provision-k8s.sh)" $(PY) -m pytest -q -p no:cacheprovider --reruns 1 --reruns-delay 5 -rR --durations=25 $(PYTEST_ARGS)

## lint: ruff (pyflakes, import order; pyproject [tool.ruff]), ruff format --check and mypy (every shipped package, strict but
## the trainer; [tool.mypy]); `make test` runs it first and stops on a finding
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

unit: venv
	$(PY) -m pytest -q tests/unit

integration: venv provision
	KUBEBUILDER_ASSETS="$$(scripts/provision-k8s.sh)" $(PY) -m pytest -q -m integration tests/integration

training: venv
	$(PY) -m pytest -q -m training tests/training

e2e: venv provision docker
	KUBEBUILDER_ASSETS="$$(scripts/provision-k8s.sh)" $(PY) -m pytest -q tests/e2e

## images: the local base image, the operator image and the trainer's CPU flavour (docker; cached);
## FLAVOR=cuda: the trainer's CUDA flavour instead (PyPI's CUDA torch, several GB; docs/images.md)
FLAVOR ?= cpu
images: docker
	SFT_TRAINER_FLAVOR=$(FLAVOR) scripts/build-images.sh

## cuda-constraints: re-resolve trainer-image/constraints-cuda.txt (the CUDA flavour's pins)
cuda-constraints:
	$(PYTHON) scripts/resolve-cuda-constraints.py

## images-test: the image tier (builds both images, runs them, trains the tiny model in the trainer image)
images-test: venv docker
	$(PY) -m pytest -q -m images tests/images

## images-test-cuda: the trainer's CUDA flavour built and tested (opt-in: 6.3 GB; docs/images.md)
images-test-cuda: venv docker
	SFT_TEST_CUDA_IMAGE=1 $(PY) -m pytest -q -rs -m images tests/images/test_cuda_image.py

# Every role's distribution, editable (core/, operator/, client/, trainer-image/), and the root's extras.
PROJECTS := core/pyproject.toml operator/pyproject.toml client/pyproject.toml trainer-image/pyproject.toml
$(STAMP): pyproject.toml $(PROJECTS) constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 first, alone: pip takes the CPU build that lies on this disk.
	$(PY) -m pip install -q 'torch==2.13.0'
	$(PY) -m pip install -q -c constraints.txt -e ./core -e ./operator -e ./client -e ./trainer-image -e '.[operator,client,trainer,dev,plot]'
	touch $(STAMP)

venv: $(STAMP)

## docker: Debian's docker.io, CNI plugins and mmdebstrap; dockerd started when none answers
docker:
	scripts/provision-docker.sh

## provision: build/cache etcd, kube-apiserver, kube-controller-manager (once, ~10 min)
provision:
	scripts/provision-k8s.sh >/dev/null

## cluster-up / cluster-down: a local control plane, kubeconfig in .local/kubeconfig
cluster-up: venv provision
	KUBEBUILDER_ASSETS="$$(scripts/provision-k8s.sh)" $(PY) -m devtools.controlplane up --state-dir .local

cluster-down: venv
	$(PY) -m devtools.controlplane down --state-dir .local

## realnode-up / realnode-down: the local control plane (advertising this machine's IP) plus a
## REAL node: dockerd, kubelet 1.20 (dockershim), kube-proxy, CNI, dev DNS, a dev provisioner of
## root-owned `local` volumes (root; docs/realnode.md). Not together with `make cluster-up`: both use .local.
realnode-up: venv provision
	KUBEBUILDER_ASSETS="$$(scripts/provision-k8s.sh)" $(PY) -m devtools.controlplane up --state-dir .local --for-real-node
	$(PY) -m devtools.node up --kubeconfig .local/kubeconfig --state-dir .local/realnode

realnode-down: venv
	$(PY) -m devtools.node down --state-dir .local/realnode --stop-dockerd
	$(PY) -m devtools.controlplane down --state-dir .local

## tiny: a tiny model and data built offline, in .local/tiny
tiny: venv
	$(PY) -m devtools.tiny_model --out .local/tiny

## run: the operator against $$KUBECONFIG
run: venv
	$(VENV)/bin/sft-operator run

## crd: regenerate crds/ and the chart's copy from the pydantic models
crd: venv
	$(PY) -m devtools.crd --write

## bench: every benchmark; chaos and status freshness train on the real node (root, docker)
bench: venv provision docker
	for b in benchmarks/*.py; do echo "== $$b"; KUBEBUILDER_ASSETS="$$(scripts/provision-k8s.sh)" $(PY) $$b || exit 1; done

clean:
	rm -rf .local build *.egg-info
