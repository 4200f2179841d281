# kubeshot — every target does its own set-up, so a fresh machine needs only `make run` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM ?= /usr/bin/chromium
PYTEST_ARGS ?=

.PHONY: setup lock packages run test test-unit test-browser test-gateway test-cluster test-node test-e2e lint crds openapi chart bench bench-operator bench-e2e bench-throughput bench-chaos testenv testenv-up testenv-down e2e-kind images gallery clean

setup: $(STAMP) packages

# Debian's packages: Chromium (Playwright drives it through executable_path; its own downloads
# are not used) with fonts (Latin, CJK, colour emoji), the maintained filter lists blockAds reads
# (uBlock Origin's EasyList/EasyPrivacy/uBlock filters), shellcheck for the scripts; for the node
# tier containerd, runc, the CNI plugins, iptables/ipset/conntrack (kube-proxy, kube-router),
# debootstrap and buildah (the capture image), gcc and libc6-dev (the static pause binary);
# prometheus for its promtool (the tests check both daemons' /metrics and the chart's alerts);
# redis-server (the gateway tier's shared rate limits and jobs; the test fixtures start their own).
# Their daemons do not run in containers (no init system); on a host with systemd Debian starts
# the services: `systemctl disable --now prometheus redis-server` if they are not wanted.
DEBIAN_PACKAGES = chromium fonts-liberation fonts-noto-cjk fonts-noto-color-emoji \
	webext-ublock-origin-chromium shellcheck containerd runc containernetworking-plugins \
	iptables ipset conntrack debootstrap buildah gcc libc6-dev prometheus redis-server
# A containerd or runc already on PATH counts (Docker's containerd.io conflicts with Debian's).
packages:
	@missing=; for p in $(DEBIAN_PACKAGES); do \
	  case $$p in containerd|runc) command -v $$p >/dev/null && continue;; esac; \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    $$missing >/dev/null; \
	fi

# The virtualenv: every dependency from the lock (each file checked against its hash), then
# kubeshot itself, editable.
$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# The lock: uv.lock, resolved from pyproject.toml once for every extra, Python and platform, and
# the requirements files pip installs from it (exported with hashes): the virtualenv's (every
# extra), the capture image's ([capture]) and the operator image's ([operator]). Run it after
# changing a dependency (tests/unit/test_lock.py fails until then); LOCK_ARGS=--upgrade moves
# every pin to the newest release allowed.
lock: $(STAMP)
	$(BIN)/uv lock $(LOCK_ARGS)
	$(BIN)/uv export -q --frozen --no-emit-project --all-extras -o requirements-dev.txt
	$(BIN)/uv export -q --frozen --no-emit-project --extra capture -o capture-pod/requirements.txt
	$(BIN)/uv export -q --frozen --no-emit-project --extra operator -o operator/requirements.txt

run: setup
	$(BIN)/kubeshot serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python hack/chartgen.py --check
	shellcheck -x hack/*.sh testenv/*.sh .ci/run

# CRDs, OpenAPI, the chart's schema and values reference are generated and checked in; tests
# fail when they drift.
crds: $(STAMP)
	$(BIN)/kubeshot crds --write crds/
	cp crds/*.yaml charts/kubeshot/crds/

chart: $(STAMP)
	$(BIN)/python hack/chartgen.py

openapi: $(STAMP)
	$(BIN)/kubeshot openapi --write operator/kubeshot/gateway/openapi.json

# Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kubectl, helm) and the
# node tier (kubelet, kube-proxy, kube-scheduler, kube-router, CoreDNS) from Go modules; as root,
# the capture and operator images (the node tier and the e2e suite import them), built while Go
# compiles (debootstrap, apt and pip mostly wait on the network: a cold run saves ~10 minutes).
testenv:
	@images=; if [ "$$(id -u)" = 0 ]; then testenv/image.sh --operator >/dev/null & images=$$!; \
	else echo "testenv: not root, so no node tier: the images are not built"; fi; \
	status=0; testenv/build.sh || status=$$?; \
	if [ -n "$$images" ]; then wait $$images || status=$$?; fi; \
	exit $$status

testenv-up: testenv
	testenv/up.sh

testenv-down:
	testenv/down.sh

# Every tier, then the e2e suite in a session of its own (the Helm-installed release on the node
# tier; on a machine without root it is skipped, and fails with CI=true).
test: setup lint testenv
	$(BIN)/pytest $(PYTEST_ARGS)
	$(BIN)/pytest -m e2e $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

test-browser: setup
	$(BIN)/pytest -m browser $(PYTEST_ARGS)

test-gateway: setup
	$(BIN)/pytest -m gateway $(PYTEST_ARGS)

test-cluster: setup testenv
	$(BIN)/pytest -m cluster $(PYTEST_ARGS)

# Root only: a kubelet, containerd and kube-router in a network namespace (testenv/node.py).
test-node: setup testenv
	$(BIN)/pytest -m node $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/capture.py
	$(BIN)/python bench/gateway.py

bench-e2e: setup testenv
	$(BIN)/python bench/e2e.py

bench-operator: setup testenv
	$(BIN)/python bench/operator.py

bench-throughput: setup
	$(BIN)/python bench/throughput.py

# Faults and overload (issue 19): killed operator, gateway, workers; API server restart; kubelet
# stopped (root: the node tier); soak and 4x load. One table, in docs/reliability.md.
bench-chaos: setup testenv
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS)

# The e2e suite (tests/e2e): on KUBECONFIG's cluster when it is set, else on the node tier (root).
test-e2e: setup testenv
	$(BIN)/pytest -m e2e $(PYTEST_ARGS)

# For machines with Docker: a kind cluster with NetworkPolicy enforcement and the images loaded,
# then the same tests/e2e suite on it.
e2e-kind: setup
	hack/e2e-kind.sh

# The images' org.opencontainers.image.version label: pyproject.toml's version, the one source.
VERSION = $(shell sed -n 's/^version = "\([^"]*\)".*/\1/p' pyproject.toml | head -n1)
images:
	docker build --build-arg KUBESHOT_VERSION=$(VERSION) -f operator/Dockerfile -t kubeshot/kubeshot:dev .
	docker build --build-arg KUBESHOT_VERSION=$(VERSION) -f capture-pod/Dockerfile -t kubeshot/capture:dev .

# Captures of local test pages (CJK/emoji, lazy images, a cookie banner and ads, a long page, a
# PDF with a footer) into build/gallery/index.html, to look at instead of read about.
gallery: setup
	$(BIN)/python hack/gallery.py --out build/gallery

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
