#!/usr/bin/env bash
# Builds the image, runs it, checks /health, then stops it with SIGTERM and expects a clean exit (code 0).
# Docker here has no bridge network, so build and run use --network host and only loopback is touched.
set -euo pipefail
cd "$(dirname "$0")/.."

image=aibill-token-service:test
name=aibill-token-service-smoke-$$
port=${SMOKE_PORT:-19000}
build_log=$(mktemp)
keys=$(mktemp -d)
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; rm -f "$build_log"; rm -rf "$keys"; }
trap cleanup EXIT

# A key as the docs mount it: a copy readable by the image's uid 1000, mode 0400, mounted read-only.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$keys/root-only.pem" 2>/dev/null
chmod 0600 "$keys/root-only.pem"
install -m 0400 -o 1000 -g 1000 "$keys/root-only.pem" "$keys/coze_private_key.pem"
chmod 0755 "$keys"
key_env=(-e JWT_PRIVATE_KEY_FILE=/run/secrets/coze_private_key.pem -e COZE_APP_ID=1150000000001 -e EXPECTED_COZE_API_KEY=smoke-test-caller-key-0123456789 -e CONSOLE_TOKEN=smoke-test-console-token-0123456789-0123)

echo "[docker] building $image"
docker build --network host -t "$image" . >"$build_log" 2>&1 || { tail -n 40 "$build_log"; exit 1; }

echo "[docker] running on 127.0.0.1:$port"
docker run -d --network host --name "$name" -e HOST=127.0.0.1 -e PORT="$port" "${key_env[@]}" \
  -v "$keys/coze_private_key.pem:/run/secrets/coze_private_key.pem:ro" "$image" >/dev/null

for _ in $(seq 60); do
  if body=$(curl -fsS "http://127.0.0.1:$port/health" 2>/dev/null); then break; fi
  sleep 0.5
done
echo "[docker] /health: ${body:-no answer}"
grep -q '"success":true' <<<"${body:-}" || { docker logs "$name"; exit 1; }
ready=$(curl -sS "http://127.0.0.1:$port/ready")
grep -q '"token":"ok"' <<<"$ready" || { echo "[docker] /ready: $ready"; docker logs "$name"; exit 1; }
echo "[docker] the mounted key file was read: /token is configured"
# The console's page and its assets come from the image itself (public/console).
for path in /console /console/assets/console.js /console/assets/console.css; do
  curl -fsS -o /dev/null "http://127.0.0.1:$port$path" || { echo "[docker] $path: not served"; docker logs "$name"; exit 1; }
done
echo "[docker] the console and its assets are served"
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
# The key as it usually sits on a host (root's, 0600), mounted as it is: the start stops and says why.
refused=$(docker run --rm --network host -e HOST=127.0.0.1 -e PORT="$port" "${key_env[@]}" \
  -v "$keys/root-only.pem:/run/secrets/coze_private_key.pem:ro" "$image" 2>&1) && { echo "[docker] started with an unreadable key"; exit 1; }
grep -q 'cannot be read (EACCES): mode 0600, owner uid 0 gid 0, and this process runs as uid 1000' <<<"$refused" \
  || { echo "[docker] an unreadable key is not explained: $refused"; exit 1; }
echo "[docker] a root-only key stops the start, naming the mode, the owner and uid 1000"

echo "[docker] ok: built, read a mounted key file, served /health, stopped cleanly (exit 0)"
