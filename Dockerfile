# syntax=docker/dockerfile:1
# One image, many roles: the probe (mtlsprobe check), the orchestrator (run/plan),
# the agent and the echo responder. Built from the project's own files only.

FROM python:3.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/mtlsprobe
COPY pyproject.toml README.md ./
COPY probe ./probe
COPY jobs ./jobs
# No extras: the lab's Envoy and the test tools stay out of the image.
RUN /opt/mtlsprobe/bin/pip install . \
 && /opt/mtlsprobe/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/mtlsprobe/bin/python -m compileall -q /opt/mtlsprobe

FROM python:3.12-slim-bookworm
# The runtime image keeps no pip, no compilers, no package manager state of ours.
RUN rm -rf /usr/local/lib/python3.12/site-packages/pip /usr/local/bin/pip* \
 && python -m compileall -q /usr/local/lib/python3.12
COPY --from=build /opt/mtlsprobe /opt/mtlsprobe
# Bytecode is precompiled above, so a read-only root filesystem works.
ENV PATH=/opt/mtlsprobe/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["mtlsprobe"]
CMD ["--help"]
