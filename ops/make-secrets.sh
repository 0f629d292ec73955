#!/bin/sh
# For docker-compose.yml: per-role NATS credentials and a throwaway CA with a certificate for the
# `nats` service, made once into $1 (a volume). Replace the CA with your own for production.
set -eu
dir="${1:-/secrets}"
mkdir -p "$dir"
cd "$dir"
[ -f auth.conf ] || node /opt/mars-fleet/bin/mars-fleet.js broker auth --out "$dir"
if [ ! -f server.pem ]; then
  ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  openssl req -x509 $ec -keyout ca.key -out ca.pem -days 825 -subj "/CN=mars-fleet compose CA"
  openssl req $ec -keyout server.key -out server.csr -subj "/CN=nats"
  printf "subjectAltName=DNS:nats,DNS:localhost,IP:127.0.0.1\n" > san.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 825 -extfile san.ext
  rm -f ca.key server.csr san.ext
fi
# nats-server in its container reads auth.conf and the key; the fleet's processes run as root here.
chmod 0644 auth.conf ca.pem server.pem
chmod 0640 server.key
