# The streamqa runtime: `streamqa monitor` on numpy and ONNX Runtime, no torch (docs/deploy.md).
#   docker build -t streamqa .
#   docker run -d -p 8765:8765 -p 5004-5005:5004-5005/udp -e STREAMQA_TOKEN_FILE=/run/secrets/streamqa_token \
#       -v /etc/streamqa/token:/run/secrets/streamqa_token:ro streamqa --rtp-map 97=opus/48000/2
FROM python:3.11-slim-bookworm

# libopus0: Opus's own concealment and in-band FEC (streamqa/rtp/opus.py); the Python wheels
# bring everything else (FFmpeg inside PyAV, libsndfile inside soundfile).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopus0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamqa ./streamqa
# [broker]: redis for --broker / STREAMQA_BROKER; the [train] extra (torch) is never installed.
RUN pip install --no-cache-dir '.[broker]' && rm -rf /src
COPY deploy/entrypoint.sh /usr/local/bin/streamqa-entrypoint

RUN useradd --system --no-create-home --shell /usr/sbin/nologin streamqa
USER streamqa
WORKDIR /

# Listen on every interface of the container; the entrypoint refuses that without a token.
ENV STREAMQA_WS=0.0.0.0:8765 \
    STREAMQA_RTP=0.0.0.0:5004 \
    PYTHONUNBUFFERED=1
# websocket + overlay + /metrics + /healthz; RTP and its RTCP (port + 1)
EXPOSE 8765/tcp 5004/udp 5005/udp

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["streamqa-entrypoint", "healthcheck"]
ENTRYPOINT ["streamqa-entrypoint"]
CMD []
