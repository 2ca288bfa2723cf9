# One command to install and run the lab, one to install and pass the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install lab test lint browser bench clean netns-deps lock image push sbom debian-base image-tools set-image

# The runtime dependencies come from the image's lock (requirements/runtime.txt), checked
# against its hashes; the dev extras are resolved on top of them.
$(STAMP): pyproject.toml requirements/runtime.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/runtime.txt
	# compat: a path entry, not an import-hook finder (~20 ms off every start-up of the CLI)
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e '.[lab,test]'
	touch $(STAMP)

install: $(STAMP) netns-deps

# `mtlsprobe lab --netns` (root only) needs ip and iptables-restore; as root on Debian,
# install what is missing. Never fatal: the loopback lab and the tests run without them
# (tests/test_lab_netns.py then says why it skips).
netns-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   ! { command -v ip && command -v iptables-restore && command -v setpriv; } >/dev/null; then \
	  echo "installing iproute2 iptables util-linux for mtlsprobe lab --netns"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    -o DPkg::Lock::Timeout=300 iproute2 iptables util-linux \
	  || echo "WARNING: could not install iproute2/iptables: lab --netns will be unavailable"; \
	fi

lab: $(STAMP)
	$(BIN)/mtlsprobe lab

# The HTML report's tests run it in Debian's headless Chromium. As root (CI, the
# container) a missing browser is installed once; otherwise say so: those tests skip.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver (Debian) for the HTML report's browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
		echo "WARNING: chromium/chromedriver missing and not root: the browser tests will SKIP" \
		     "(as root: apt-get install chromium chromium-driver)" >&2; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint browser
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info .cache/image

# ---- the container image (issue #12) -------------------------------------------------
VERSION      := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' probe/__init__.py)
IMAGE        ?= localhost/mtlsprobe:$(VERSION)
PYTHON_IMAGE ?= python:3.12-slim-bookworm
# buildah, podman or a docker whose daemon answers, whichever is found first.
BUILD_TOOL   ?= $(shell for t in buildah podman; do command -v $$t >/dev/null && { echo $$t; exit; }; done; \
                  docker info >/dev/null 2>&1 && echo docker)
# Global flags for buildah/podman (the tests pass --root/--runroot under .cache/).
TOOL_FLAGS   ?=
BASE_SUITE   ?= bookworm
BASE_TAR     := .cache/image/debian-base-$(BASE_SUITE).tar
BASE_IMAGE   ?= localhost/mtlsprobe-base:$(BASE_SUITE)
SBOM         ?= mtlsprobe-$(VERSION).cdx.json

define need_tool
	@test -n "$(BUILD_TOOL)" || { echo "make: no buildah, podman or running docker (as root: make image-tools)" >&2; exit 1; }
endef

# Debian's buildah (daemonless), podman, runc and mmdebstrap, installed only as root
# and only when one is missing.
image-tools:
	@missing=""; for t in buildah podman runc mmdebstrap; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	    echo "make: missing$$missing; install them (Debian/Ubuntu: apt-get install$$missing)" >&2; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null

# Rewrite the hashed lock files from pyproject.toml (needs network; uv from PyPI).
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet 'uv>=0.5'
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
	    --no-header --quiet -o requirements/runtime.txt
	$(BIN)/uv pip compile requirements/build.in --universal --python-version 3.11 \
	    --generate-hashes --no-header --quiet -o requirements/build.txt

image:
	$(need_tool)
	case "$(BUILD_TOOL)" in \
	  buildah) buildah $(TOOL_FLAGS) build --isolation chroot --layers --force-rm --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t $(IMAGE) . ;; \
	  podman)  podman $(TOOL_FLAGS) build --isolation chroot --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t $(IMAGE) . ;; \
	  *)       $(BUILD_TOOL) build --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t $(IMAGE) . ;; \
	esac

# The SBOM the build wrote (CycloneDX JSON), copied out of the image.
sbom:
	$(need_tool)
	case "$(BUILD_TOOL)" in \
	  buildah) c=$$(buildah $(TOOL_FLAGS) from $(IMAGE)) && m=$$(buildah $(TOOL_FLAGS) mount $$c) \
	           && cp $$m/opt/mtlsprobe/share/sbom.cdx.json $(SBOM); rc=$$?; buildah $(TOOL_FLAGS) rm $$c >/dev/null; exit $$rc ;; \
	  *) $(BUILD_TOOL) $(TOOL_FLAGS) run --rm --entrypoint cat $(IMAGE) /opt/mtlsprobe/share/sbom.cdx.json > $(SBOM) ;; \
	esac
	@echo "SBOM: $(SBOM)"

# Push to the registry named in IMAGE: make push IMAGE=registry.example.com/team/mtlsprobe:0.1.0
push:
	$(need_tool)
	@case "$(IMAGE)" in localhost/*) echo "make push: IMAGE=$(IMAGE) names no registry; use IMAGE=registry/name:tag (and make image with the same IMAGE)" >&2; exit 64;; esac
	$(BUILD_TOOL) $(TOOL_FLAGS) push $(IMAGE)

# Point every kustomization (base, overlays, echo) at IMAGE: one edit of the component
# k8s/components/image, which they all include (`kustomize edit set image` there works too).
set-image:
	@ref='$(IMAGE)'; case "$$ref" in \
	  *@*) name=$${ref%@*}; pin="digest: $${ref#*@}" ;; \
	  *) case "$${ref##*/}" in *:*) name=$${ref%:*}; pin="newTag: \"$${ref##*:}\"" ;; \
	                           *) name=$$ref; pin='newTag: latest'; ref=$$ref:latest ;; esac ;; \
	esac; \
	printf '%s\n' '# The image every kustomization here runs; `make set-image IMAGE=...` rewrites it.' \
	  'apiVersion: kustomize.config.k8s.io/v1alpha1' 'kind: Component' 'images:' \
	  '  - name: ghcr.io/mtlsprobe/mtlsprobe' "    newName: $$name" "    $$pin" \
	  '# ...and the image the probe Jobs run (`mtlsprobe run` reads it from this ConfigMap).' \
	  'patches:' '  - target: {kind: ConfigMap, name: mtlsprobe-config}' '    patch: |-' \
	  '      - op: replace' '        path: /data/MTLSPROBE_IMAGE' "        value: \"$$ref\"" \
	  > k8s/components/image/kustomization.yaml
	@echo "k8s/ now runs $(IMAGE)"

# A stand-in for the python base from Debian packages, for hosts that cannot reach
# Docker Hub: make debian-base && make image PYTHON_IMAGE=localhost/mtlsprobe-base:bookworm
$(BASE_TAR): tests/container/debian-base.sh
	mkdir -p $(dir $@)
	tests/container/debian-base.sh $@.part $(BASE_SUITE) && mv $@.part $@

debian-base: $(BASE_TAR)
	$(need_tool)
	case "$(BUILD_TOOL)" in \
	  buildah) c=$$(buildah $(TOOL_FLAGS) from scratch) && buildah $(TOOL_FLAGS) add $$c $(BASE_TAR) / \
	           && buildah $(TOOL_FLAGS) config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	              --env LANG=C.UTF-8 --cmd python $$c \
	           && buildah $(TOOL_FLAGS) commit --rm --quiet $$c $(BASE_IMAGE) ;; \
	  *) $(BUILD_TOOL) $(TOOL_FLAGS) import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	        --change 'CMD ["python"]' $(BASE_TAR) $(BASE_IMAGE) ;; \
	esac
