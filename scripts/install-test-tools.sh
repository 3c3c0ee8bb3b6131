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
# The tests' Redis is REDIS_URL (default redis://127.0.0.1:6379): one is started on its port when it is local.
url=${REDIS_URL:-redis://127.0.0.1:6379}
hostport=${url#*://}; hostport=${hostport##*@}; hostport=${hostport%%/*}
host=${hostport%:*}; port=${hostport##*:}; [ "$port" = "$hostport" ] && port=6379
if ! redis-cli -h "$host" -p "$port" ping 2>/dev/null | grep -q PONG; then
  case "$host" in
    127.0.0.1|localhost)
      echo "test tools: starting redis-server on 127.0.0.1:$port"
      redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$port" --save "" --appendonly no >/dev/null ;;
    *) echo "test tools: no Redis answers at $host:$port (REDIS_URL); start it, or unset REDIS_URL for a local one" >&2; exit 1 ;;
  esac
fi
