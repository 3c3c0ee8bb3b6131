#!/usr/bin/env bash
# What npm test needs beyond npm ci, from Debian's packages: Redis (the shared stores), Chromium (the /docs page is
# opened in it) and promtool (it checks /metrics). Run as root, or with sudo: npm run setup:test-tools
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/promtool ] || missing+=(prometheus)
if [ ${#missing[@]} -eq 0 ]; then
  echo "test tools: all present"
else
  echo "test tools: installing ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
  echo "test tools: starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no >/dev/null
fi
