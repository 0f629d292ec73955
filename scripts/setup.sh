#!/usr/bin/env bash
# Installs what `npm run demo`, `npm test` and `npm run bench` need and the machine lacks:
# nats-server, ecCodes' tools and openssl from Debian, and the npm dependencies. With the argument
# `test`, also Debian's chromium, in which the dashboard is tested (no browser is downloaded), and
# iproute2 for the multi-host tests in network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v grib_ls >/dev/null 2>&1 || missing+=(libeccodes-tools)
# The TLS tests make a throwaway CA with openssl.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${1:-}" = test ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  # The multi-host tests put nodes and hosts in network namespaces (ip netns, veth, tc netem).
  { command -v ip && command -v tc; } >/dev/null 2>&1 || [ -x /usr/sbin/tc ] || missing+=(iproute2)
fi
if ((${#missing[@]} > 0)); then
  echo "setup: installing ${missing[*]} with apt-get" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules/@nats-io/jetstream ] || [ ! -d node_modules/typescript ] || [ ! -d node_modules/bcryptjs ] || [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/@fastify/send ] || [ ! -d node_modules/dependency-cruiser ]; then
  echo "setup: installing npm dependencies" >&2
  npm ci --no-audit --no-fund
fi
