# imgembed: one image for the HTTP API (IMGEMBED_MODE=http, the default) and the RunPod worker
# (IMGEMBED_MODE=runpod). docs/deploy/docker.md has the commands; in short:
#
#   docker build -t imgembed:cpu .
#   docker build -t imgembed:cuda --build-arg VARIANT=cuda .
#   docker build -t imgembed:sam2-large --build-arg VARIANT=cuda \
#       --build-arg MODELS="sam2.1-hiera-large siglip2-large-patch16-512" .
#
# Every RUN step is a step of docker/install.sh, which tests/deploy/test_docker_install.py runs.
#
# Pinned exactly (docs/deploy/docker.md, "Pins"): the base image by its multi-platform manifest
# digest, torch by version and wheel tag (2.13.0+cpu, or 2.13.0+cu128 from PyTorch's cu128 index,
# whose metadata pins the CUDA libraries it brings), everything else by docker/constraints.txt.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# --- build: the virtual environment (torch pinned, CPU or CUDA build, then imgembed) --------------
FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ARG EXTRAS=runpod
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY docker ./docker
RUN docker/install.sh venv --venv /opt/venv --variant "${VARIANT}" --cuda "${TORCH_CUDA}" \
        --torch-version "${TORCH_VERSION}" --extras "${EXTRAS}" --source /src

# --- weights: `imgembed download MODELS` into a Hugging Face cache (empty when MODELS is empty) ----
FROM build AS weights
ARG MODELS=""
# hadolint ignore=SC2086
RUN docker/install.sh weights --venv /opt/venv --cache /opt/hf-cache \
        --config /opt/imgembed/models.toml ${MODELS}

# --- runtime: the environment, the weights, a non-root user ---------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="imgembed" \
      org.opencontainers.image.description="SAM 2 features and masks, SigLIP 2 embeddings: HTTP API and RunPod worker" \
      org.opencontainers.image.licenses="Apache-2.0" \
      imgembed.variant="${VARIANT}"
COPY docker/install.sh /usr/local/lib/imgembed/install.sh
RUN /usr/local/lib/imgembed/install.sh user --name imgembed --uid 10001 --home /home/imgembed \
        --owns /opt/hf-cache --owns /data
COPY --from=build /opt/venv /opt/venv
COPY --from=weights --chown=10001:10001 /opt/hf-cache /opt/hf-cache
COPY --from=weights /opt/imgembed /opt/imgembed
COPY docker/entrypoint.sh /usr/local/bin/imgembed-entrypoint
COPY docker/healthcheck.py /usr/local/lib/imgembed/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_CACHE=/opt/hf-cache \
    IMGEMBED_MODE=http \
    IMGEMBED_HOST=0.0.0.0 \
    IMGEMBED_PORT=8000 \
    IMGEMBED_COLLECTIONS_DIR=/data/collections
USER 10001:10001
WORKDIR /home/imgembed
EXPOSE 8000
# Start-up (imports, weights, warm-up) takes seconds to a minute; /health/ready answers 200 after.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/lib/imgembed/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/imgembed-entrypoint"]
CMD []
