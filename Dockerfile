# One image for both sides: the default command is the edge server; the client runs `mobile-client ...`.
#   docker build -t splitdet .             (torch from PyPI: runs on CUDA GPUs and on CPU)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t splitdet .   (CPU only, smaller)
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    SPLITDET_ASSETS=/app/common/assets \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY splitdet ./splitdet
COPY proto ./proto
COPY common ./common
COPY edge_server ./edge_server
COPY mobile_client ./mobile_client
COPY distill ./distill
COPY benchmarks ./benchmarks
COPY synthetic ./synthetic
COPY configs ./configs
# torch==2.14.1 and torchvision==0.29.1 are pinned by pyproject.toml's `full` extra.
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} ".[full]" \
    && useradd --create-home --uid 10001 splitdet

USER splitdet
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "splitdet.edge_server.healthcheck", "127.0.0.1:50051"]
ENTRYPOINT ["edge-server"]
CMD ["--host", "0.0.0.0", "--port", "50051"]
