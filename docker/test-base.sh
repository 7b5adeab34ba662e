#!/usr/bin/env bash
# Build a minimal local base image for the image-build test (Docker Hub is out of reach there):
# debootstrap a Debian root file system with Python, pack it as a tarball once (cached), and import it
# into buildah's local storage as localhost/tunebook-test-base.
#
#   docker/test-base.sh [SUITE] [IMAGE]      # defaults: bookworm localhost/tunebook-test-base
#
# Env: TUNEBOOK_BASE_CACHE (default /var/tmp/tunebook-base), DEBIAN_MIRROR (default http://deb.debian.org/debian),
# TUNEBOOK_CPU_LOCK (a lock file taken around debootstrap; default: none).
# Needs root, debootstrap and buildah. Prints the image name on success.
set -euo pipefail
SUITE=${1:-bookworm}
IMAGE=${2:-localhost/tunebook-test-base}
CACHE=${TUNEBOOK_BASE_CACHE:-/var/tmp/tunebook-base}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,make,ca-certificates
TARBALL="$CACHE/$SUITE-minbase.tar"

mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
  ROOTFS=$(mktemp -d "$CACHE/.rootfs-$SUITE.XXXXXX")
  trap 'rm -rf "$ROOTFS"' EXIT
  echo "test-base: debootstrap $SUITE (minbase + $PACKAGES) into $ROOTFS" >&2
  # debootstrap is the one heavy step: it takes the shared CPU lock when there is one (TUNEBOOK_CPU_LOCK).
  LOCK=${TUNEBOOK_CPU_LOCK:-}
  WRAP=()
  if [ -n "$LOCK" ] && command -v flock >/dev/null; then WRAP=(flock "$LOCK"); fi
  "${WRAP[@]}" debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >&2
  # Slim it: apt lists and caches are not needed in an image.
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb
  tar --numeric-owner -C "$ROOTFS" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"   # atomic: a half-written tarball is never cached
  rm -rf "$ROOTFS"
  trap - EXIT
fi

# This machine's CA bundle goes into the image: pip inside the build must trust what this machine trusts (a
# TLS-inspecting proxy's CA, for one). CA certificates are public; nothing secret is copied.
CA=/etc/ssl/certs/ca-certificates.crt
KEY="$(stat -c %Y "$TARBALL")-$( [ -s "$CA" ] && sha256sum "$CA" | cut -c1-16 || echo noca)"
if buildah inspect --type image "$IMAGE" >/dev/null 2>&1 \
   && [ "$(buildah inspect --type image --format '{{index .ImageAnnotations "org.tunebook.base-key"}}' "$IMAGE" 2>/dev/null)" = "$KEY" ]; then
  echo "$IMAGE"
  exit 0
fi
CTR=$(buildah from scratch)
trap 'buildah rm "$CTR" >/dev/null 2>&1 || true' EXIT
buildah add "$CTR" "$TARBALL" / >/dev/null
CA_ENV=()
if [ -s "$CA" ]; then
  buildah copy "$CTR" "$CA" "$CA" >/dev/null
  CA_ENV=(--env "PIP_CERT=$CA" --env "SSL_CERT_FILE=$CA" --env "REQUESTS_CA_BUNDLE=$CA")
fi
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
  "${CA_ENV[@]}" --cmd /bin/bash --annotation "org.tunebook.base-key=$KEY" "$CTR"
buildah commit -q --rm "$CTR" "$IMAGE" >/dev/null
trap - EXIT
echo "$IMAGE"
