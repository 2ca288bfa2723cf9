#!/bin/sh
# Build a stand-in for the official python:<ver>-slim base from Debian packages, for
# hosts that reach Debian's archive and PyPI but not Docker Hub (CI here). The image
# has what the Dockerfile asks of a base and nothing else: `python` on PATH with venv,
# CA certificates. The host's CA bundle, pip.conf and apt proxy/validity settings are
# copied in so the image build reaches the package index the way this host does.
#
#   tests/container/debian-base.sh OUT.tar [SUITE]
#
# Writes a root filesystem tarball; `make debian-base` imports it as an image.
set -eu
out=$1
suite=${2:-bookworm}

# The host's Debian sources (deb822 first), unless MIRROR names one.
mirror=${MIRROR:-}
if [ -z "$mirror" ]; then
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        if [ -s "$f" ]; then mirror=$f; break; fi
    done
fi
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

# apt settings the host needs to reach its mirror (proxies, snapshot validity dates).
aptopts=$(mktemp)
trap 'rm -f "$aptopts"' EXIT
apt-config dump 2>/dev/null \
    | grep -E '^Acquire::(https?::Proxy|Check-Valid-Until|Check-Date)' >"$aptopts" || true

set -- --variant=essential \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    --aptopt="$aptopts" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*'
# ca-certificates regenerates the bundle on install; the host's (which may carry an
# egress proxy's CA) replaces it afterwards.
ca=/etc/ssl/certs/ca-certificates.crt
if [ -s "$ca" ]; then
    set -- "$@" --customize-hook="copy-in $ca /etc/ssl/certs"
fi
if [ -s /etc/pip.conf ]; then
    set -- "$@" --customize-hook='copy-in /etc/pip.conf /etc'
fi
# No apt lists or caches in the base: the image adds nothing on top of them either.
set -- "$@" --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*'
exec mmdebstrap "$@" "$suite" "$out" "$mirror" </dev/null
