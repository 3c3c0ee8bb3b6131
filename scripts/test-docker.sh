#!/usr/bin/env bash
# Builds the image, runs it, checks /health, then stops it with SIGTERM and expects a clean exit (code 0).
# Docker here has no bridge network, so build and run use --network host and only loopback is touched.
set -euo pipefail
cd "$(dirname "$0")/.."

image=aibill-token-service:test
name=aibill-token-service-smoke-$$
port=${SMOKE_PORT:-19000}
build_log=$(mktemp)
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; rm -f "$build_log"; }
trap cleanup EXIT

echo "[docker] building $image"
docker build --network host -t "$image" . >"$build_log" 2>&1 || { tail -n 40 "$build_log"; exit 1; }

echo "[docker] running on 127.0.0.1:$port"
docker run -d --network host --name "$name" -e HOST=127.0.0.1 -e PORT="$port" "$image" >/dev/null

for _ in $(seq 60); do
  if body=$(curl -fsS "http://127.0.0.1:$port/health" 2>/dev/null); then break; fi
  sleep 0.5
done
echo "[docker] /health: ${body:-no answer}"
grep -q '"success":true' <<<"${body:-}" || { docker logs "$name"; exit 1; }
[ "$(docker inspect -f '{{.Config.User}}' "$name")" = node ] || { echo "[docker] the image does not run as the node user"; exit 1; }
# The image's own HEALTHCHECK command (["CMD", "bash", "-c", script]), run inside the container as Docker runs it.
health_cmd=$(docker inspect -f '{{index .Config.Healthcheck.Test 3}}' "$name")
docker exec -e PORT="$port" "$name" bash -c "$health_cmd" || { echo "[docker] the HEALTHCHECK command fails inside the image"; exit 1; }
echo "[docker] HEALTHCHECK command: healthy"
docker exec "$name" sh -c 'test ! -w /app/dist/server.js && test ! -w /app/node_modules && test "$(stat -c %U /app/dist/server.js)" = root' \
  || { echo "[docker] the app files are writable by the node user"; exit 1; }
echo "[docker] app files: owned by root, read-only for node"

echo "[docker] stopping with SIGTERM"
docker stop -t 20 "$name" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
docker logs "$name" 2>&1 | grep -q '"signal":"SIGTERM"' || { echo "[docker] no graceful close in the logs"; docker logs "$name"; exit 1; }
[ "$code" = 0 ] || { echo "[docker] exit code $code"; exit 1; }
echo "[docker] ok: built, served /health, stopped cleanly (exit 0)"
