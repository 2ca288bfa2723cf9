# syntax=docker/dockerfile:1
# One image, many roles: the probe (mtlsprobe check), the orchestrator (run/plan),
# the agent and the echo responder. Built from the project's own files only.
#
# PYTHON_IMAGE: any base with `python` (3.11+, with venv) on PATH and CA certificates.
# Nothing below depends on where the base keeps its interpreter or standard library;
# `make debian-base` builds a stand-in from Debian packages for hosts without Docker Hub.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Every distribution installed below is pinned by hash (requirements/*.txt, made by
# `make lock`); pip refuses anything else, and --no-deps means nothing is resolved here.
COPY requirements ./requirements
# Build-only tools: setuptools to build the project, cyclonedx-py for the SBOM.
RUN python -m venv /opt/build-tools \
 && /opt/build-tools/bin/pip install --require-hashes --no-deps -r requirements/build.txt
RUN python -m venv /opt/mtlsprobe \
 && /opt/mtlsprobe/bin/pip install --require-hashes --no-deps -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY probe ./probe
COPY jobs ./jobs
# No extras: the lab's Envoy and the test tools stay out of the image. `pip check`
# fails the build if the lock no longer satisfies pyproject.toml. The Kubernetes
# client's asyncio twin (kubernetes.aio, ~70 MB with bytecode) is never imported here.
RUN /opt/build-tools/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
 && /opt/mtlsprobe/bin/pip install --no-deps --no-index /tmp/dist/mtlsprobe-*.whl \
 && /opt/mtlsprobe/bin/pip check \
 && /opt/mtlsprobe/bin/pip uninstall --yes pip setuptools wheel \
 && rm -r "$(/opt/mtlsprobe/bin/python -c 'import kubernetes, os; print(os.path.dirname(kubernetes.__file__))')/aio" \
 && /opt/mtlsprobe/bin/python -m compileall -q /opt/mtlsprobe \
 && mkdir -p /out \
 && /opt/build-tools/bin/cyclonedx-py environment --output-reproducible \
        --output-format JSON --output-file /out/sbom.cdx.json /opt/mtlsprobe

FROM ${PYTHON_IMAGE}
# The runtime stage runs no package manager: the base's state is all there is.
COPY --from=build /opt/mtlsprobe /opt/mtlsprobe
COPY --from=build /out/sbom.cdx.json /opt/mtlsprobe/share/sbom.cdx.json
# A read-only root filesystem cannot cache bytecode, so compile the standard library
# now (found through sysconfig, so any base works; a no-op where the base ships .pyc).
# Files that do not compile (test data in some bases) are skipped, not fatal.
RUN python -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_path('stdlib'), quiet=2, workers=0)"
ENV PATH=/opt/mtlsprobe/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["mtlsprobe"]
CMD ["--help"]
