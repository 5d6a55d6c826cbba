#!/bin/sh
# streamqa's container entrypoint: the image's command is `streamqa monitor`, configured from
# the environment the CLI reads itself (STREAMQA_TOKEN or STREAMQA_TOKEN_FILE, STREAMQA_WS,
# STREAMQA_RTP, STREAMQA_MODEL, STREAMQA_ALLOW_HOST, STREAMQA_BROKER; docs/deploy.md).
# What it adds is what a container needs and the CLI cannot know:
#   - listen on every interface (a monitor on the container's loopback is unreachable);
#   - refuse to serve beyond loopback without a token, unless STREAMQA_NO_TOKEN=1 says that
#     is meant, and check a token file before starting; the token itself is never printed;
#   - keep 127.0.0.1 among the allowed Host names, so the health check below is answered;
#   - `healthcheck`: exit 0 iff /healthz on the monitor's port says ok (the image's
#     HEALTHCHECK; python, since a slim image has no curl).
# Arguments: none or options (`--rtp-map 96=opus/48000/2 ...`) run the monitor with them; a
# streamqa command (monitor, gateway, score, models) runs it; anything else is executed.
set -eu

: "${STREAMQA_WS:=0.0.0.0:8765}"
: "${STREAMQA_RTP:=0.0.0.0:5004}"
export STREAMQA_WS STREAMQA_RTP

say() { echo "streamqa-entrypoint: $*" >&2; }

ws_port() {
    port=${STREAMQA_WS##*:}
    case $port in
        ''|*[!0-9]*) say "STREAMQA_WS must be HOST:PORT, got '$STREAMQA_WS'"; exit 64 ;;
    esac
    echo "$port"
}

healthcheck() {
    exec python3 - "$(ws_port)" <<'PY'
import json, sys, urllib.request
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/healthz")
try:
    with urllib.request.urlopen(request, timeout=3) as answer:
        sys.exit(0 if json.load(answer).get("status") == "ok" else 1)
except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", said in one line
    print(f"streamqa-entrypoint: /healthz: {exc}", file=sys.stderr)
    sys.exit(1)
PY
}

check_access() {
    ws_port >/dev/null
    if [ -n "${STREAMQA_TOKEN_FILE:-}" ] && [ ! -r "$STREAMQA_TOKEN_FILE" ]; then
        say "the token file STREAMQA_TOKEN_FILE=$STREAMQA_TOKEN_FILE cannot be read"
        exit 64
    fi
    case ${STREAMQA_WS%:*} in
        127.*|localhost|'[::1]') ;;
        *)
            if [ -z "${STREAMQA_TOKEN:-}${STREAMQA_TOKEN_FILE:-}" ] && [ "${STREAMQA_NO_TOKEN:-0}" != 1 ]; then
                say "STREAMQA_WS=$STREAMQA_WS serves beyond loopback: set STREAMQA_TOKEN or STREAMQA_TOKEN_FILE (or STREAMQA_NO_TOKEN=1 to serve without one)"
                exit 64
            fi ;;
    esac
    if [ -n "${STREAMQA_ALLOW_HOST:-}" ]; then
        case ",$STREAMQA_ALLOW_HOST," in
            *,127.0.0.1,*|*,\*,*) ;;
            *) STREAMQA_ALLOW_HOST="$STREAMQA_ALLOW_HOST,127.0.0.1"; export STREAMQA_ALLOW_HOST ;;
        esac
    fi
}

case "${1:-}" in
    healthcheck) healthcheck ;;
    ''|-*) check_access; exec streamqa monitor "$@" ;;
    monitor|gateway) check_access; exec streamqa "$@" ;;
    score|models) exec streamqa "$@" ;;
    *) exec "$@" ;;
esac
