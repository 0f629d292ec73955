#!/bin/sh
# Unpack Debian trixie's nats-server (2.10.x) into a folder, beside the system one (never over it),
# to run the suite or a test file against a newer server:
#   sh scripts/newer-nats.sh /opt/nats-2.10
#   NATS_SERVER_BIN=/opt/nats-2.10/usr/sbin/nats-server npm test
# Needs root (apt). The trixie suite is added for one `apt-get update` and removed again.
set -eu
dir="${1:?usage: newer-nats.sh <folder>}"
list=/etc/apt/sources.list.d/mars-fleet-trixie.sources
cleanup() {
  rm -f "$list"
  apt-get update -qq || true
}
trap cleanup EXIT
cat > "$list" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt-get update -qq
work=$(mktemp -d)
(cd "$work" && apt-get download -qq nats-server/trixie)
mkdir -p "$dir"
dpkg-deb -x "$work"/nats-server_*.deb "$dir"
rm -rf "$work"
"$dir/usr/sbin/nats-server" --version
