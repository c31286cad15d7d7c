#!/bin/bash
# Install the pinned Traefik release, refusing any executable whose SHA-256 differs
# from the digest pinned in the program (components/traefik.py).
#   install-traefik.sh SHA256 URL|/path/to/tarball [DEST]
set -euo pipefail

sha256=$1
source=$2
dest=${3:-/usr/local/bin/traefik}

if [[ ! $sha256 =~ ^[0-9a-f]{64}$ ]]; then
  echo "install-traefik: '$sha256' is not a SHA-256 digest" >&2
  exit 2
fi
if [[ -x $dest ]] && echo "$sha256  $dest" | sha256sum --check --status; then
  echo "install-traefik: $dest already is the pinned release"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [[ $source == /* ]]; then
  cp -- "$source" "$work/traefik.tar.gz"
else
  curl --fail --silent --show-error --location --proto '=https' --tlsv1.2 \
    --retry 5 --retry-delay 3 --retry-connrefused --output "$work/traefik.tar.gz" "$source"
fi
tar -xzf "$work/traefik.tar.gz" -C "$work" traefik
actual=$(sha256sum "$work/traefik" | cut -d' ' -f1)
if [[ $actual != "$sha256" ]]; then
  echo "install-traefik: refusing $source: the traefik executable has SHA-256 $actual, the pinned digest is $sha256" >&2
  exit 1
fi
install -m 0755 -o root -g root "$work/traefik" "$dest.new"
mv -f "$dest.new" "$dest"
echo "install-traefik: installed $("$dest" version | sed -n 's/^Version: *//p') to $dest"
