#!/usr/bin/env bash
# Make the base image that the Dockerfiles under images/ start FROM
# (debian:bookworm-slim) when no container registry can be reached, as on an
# air-gapped machine: it is built locally with debootstrap from a Debian mirror
# (debootstrap's default, or DEBIAN_MIRROR=URL for a local one).
# Does nothing when the image is already there or can be pulled.
set -euo pipefail
image=${BASE_IMAGE:-debian:bookworm-slim}
mirror=${DEBIAN_MIRROR:-}

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image: present"
  exit 0
fi
if timeout 60 docker pull "$image" >/dev/null 2>&1; then
  echo "base image $image: pulled"
  exit 0
fi
if ! command -v debootstrap >/dev/null; then
  echo "no registry answered and debootstrap is missing: apt-get install debootstrap" >&2
  exit 1
fi
suite=${image#*:}
suite=${suite%-slim}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "base image $image: building with debootstrap (about half a minute)"
# An empty mirror argument is left out: debootstrap then uses its default.
debootstrap --variant=minbase "$suite" "$root" ${mirror:+"$mirror"} >/dev/null
# What the -slim images leave out: caches and documentation.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/*
tar -C "$root" -c . | docker import \
  --change 'CMD ["bash"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  - "$image" >/dev/null
echo "base image $image: built"
