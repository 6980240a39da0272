#!/usr/bin/env bash
# `make image`: the CPU image (docker/Containerfile) built from nothing with podman.
#
# No registry is reachable from the build machines, so the base is made from Debian's packages
# (mmdebstrap -> podman import) unless BASE names an image that can be had. The context is
# staged under .run/image/context: the project's files (tracked and untracked, not ignored),
# the trained FuseMoE checkpoint of the built blocks, and the CPU torch wheel when it lies on
# this disk. Settings: IMAGE, BASE, SUITE (Debian suite of the made base), CONTAINERFILE
# (docker/Containerfile; the GPU one with BASE=nvcr.io/nvidia/tritonserver:24.10-py3).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
IMAGE=${IMAGE:-localhost/fusedembed:cpu}
CONTAINERFILE=${CONTAINERFILE:-docker/Containerfile}
SUITE=${SUITE:-bookworm}
BASE=${BASE:-localhost/fusedembed-base:$SUITE}
WORK=$ROOT/.run/image
PY=${PY:-$ROOT/.venv/bin/python}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need podman || ! need mmdebstrap || ! need runc; then
  if [ "$(id -u)" -eq 0 ] && need apt-get; then
    echo "installing podman, mmdebstrap and runc from Debian's packages ..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman mmdebstrap runc uidmap >/dev/null
  else
    echo "error: podman, mmdebstrap and runc are needed (apt-get install podman mmdebstrap runc)" >&2
    exit 1
  fi
fi
# runc (crun fails on hosts with hybrid cgroups) and explicit ulimits (a host without
# CAP_SYS_RESOURCE cannot raise them): docker/containers.conf, unless one is given.
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/docker/containers.conf}

mkdir -p "$WORK"
if ! podman image exists "$BASE"; then
  if [[ "$BASE" != localhost/fusedembed-base:* ]]; then
    podman pull "$BASE"
  else
    echo "making the base $BASE from Debian $SUITE (mmdebstrap) ..."
    mmdebstrap --quiet --variant=apt --include=python3 "$SUITE" "$WORK/base.tar"
    podman import --quiet "$WORK/base.tar" "$BASE" >/dev/null
    rm -f "$WORK/base.tar"
  fi
fi

# What the image is built from, as a label: a test rebuilds an image older than the tree.
source=$("$PY" -m perf.container --digest)
echo "staging the build context in $WORK/context ..."
rm -rf "$WORK/context"
mkdir -p "$WORK/context/fusemoe" "$WORK/context/wheels" "$WORK/context/certs"
git ls-files -z --cached --others --exclude-standard \
  | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$WORK/context"
checkpoint=$("$PY" -c 'from pathlib import Path; from export.build import trained_checkpoint
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()):
    found = trained_checkpoint(Path("model_repository"))
print(found or "")')
if [ -n "$checkpoint" ]; then
  mkdir "$WORK/context/fusemoe/$(basename "$checkpoint")"
  cp -l "$checkpoint"/* "$WORK/context/fusemoe/$(basename "$checkpoint")/"
  echo "FuseMoE: $checkpoint"
else
  echo "FuseMoE: no trained checkpoint for these blocks (make train); the image serves the seeded one"
fi
for wheel in /opt/wheels/torch-2.13.0+cpu-*.whl; do
  [ -f "$wheel" ] && cp -l "$wheel" "$WORK/context/wheels/"
done

# Certificate authorities added to this host (an intercepting proxy's): the build stage trusts
# them to reach the package registries; the image does not keep them.
for ca in /usr/local/share/ca-certificates/*.crt; do
  [ -f "$ca" ] && cp "$ca" "$WORK/context/certs/"
done

echo "building $IMAGE FROM $BASE ..."
start=$(date +%s)
podman build --isolation=chroot --format docker --build-arg "BASE=$BASE" \
  --label "fusedembed.source=$source" -f "$CONTAINERFILE" -t "$IMAGE" "$WORK/context"
rm -rf "$WORK/context"
# The image this one replaced (untagged now) is gigabytes.
podman image prune --force >/dev/null
echo "built $IMAGE in $(( $(date +%s) - start )) s: $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
