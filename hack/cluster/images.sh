#!/usr/bin/env bash
# Build the worker and operator images without a registry and import them into the cluster.
#  1. base rootfs: debootstrap bookworm (minbase + runtime libs), cached as a tarball
#  2. base images: rootfs + a CPython build from pyenv copied to /usr/local (the layout of the
#     public python:3.X-slim images), `docker import`ed as tfe-operator/base-python:3.X-bookworm
#  3. wheelhouse: the pinned requirements as wheels, built on the host from its pip cache, so the
#     image build itself needs no network (pip reads PIP_NO_INDEX/PIP_FIND_LINKS build args)
#  4. docker build worker-image/Dockerfile and operator/Dockerfile with --build-arg BASE_IMAGE=...;
#     the worker's tfe-guard is build/tfe-guard (`make guard` on the host, Go module cache),
#     handed to the Dockerfile's guard stage as a tiny image (GO_IMAGE) that already holds it
#  5. docker save | ctr -n k8s.io images import into the cluster's containerd (if it is running)
# `images.sh push REGISTRY` (make push REGISTRY=...): tag the built images as
# REGISTRY/tfe-operator/{worker,operator}:VERSION and docker push them (any registry docker is
# logged in to; 127.0.0.0/8 registries need no TLS: the local one from cluster-up). Prints digests.
# dockerd runs with its own sockets, no bridge and no iptables rules; cluster.sh down stops it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/paths.sh"
VERSION=$(cat "$REPO/VERSION")
W=$CLUSTER_CACHE/images
export DOCKER_HOST=unix://$DOCKER_SOCK
export DOCKER_BUILDKIT=0            # classic builder: works with dockerd 20.10 and no buildx plugin
PYENV_ROOT=${PYENV_ROOT:-$HOME/.pyenv}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORKER_IMAGE=tfe-operator/worker:$VERSION
OPERATOR_IMAGE=tfe-operator/operator:$VERSION
# test-only: the S3-compatible server of the model.s3 cluster test, pushed to the local registry only
S3_TEST_IMAGE=tfe-operator/gofakes3:$GOFAKES3_VERSION
MODE=${1:-build}
case $MODE in
  build) ;;
  push) REGISTRY=${2:-}; [ -n "$REGISTRY" ] || die "usage: $0 push REGISTRY (e.g. ghcr.io/OWNER or $LOCAL_REGISTRY)" ;;
  *) die "usage: $0 [build | push REGISTRY]" ;;
esac
[ "$(id -u)" = 0 ] || die "make images needs root (debootstrap, dockerd)"
mkdir -p "$W" "$LOGS" "$PIDS" "$RUN"

pyenv_python() { # 3.10 -> /root/.pyenv/versions/3.10.x
  local d; d=$(ls -d "$PYENV_ROOT"/versions/"$1".* 2>/dev/null | sort -V | tail -1)
  [ -x "$d/bin/python$1" ] || die "Python $1 not found under $PYENV_ROOT/versions (install it with pyenv)"
  echo "$d"
}

# --- 1. base rootfs ------------------------------------------------------------------------
# iptables: the mesh-init container (docs/mesh.md). The tarball's name follows the package list.
LIBS=ca-certificates,libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,libreadline8,zlib1g,libncursesw6,libuuid1,libexpat1,libgdbm6,libnsl2,libtirpc3,libgomp1,libstdc++6,tzdata,netbase,iptables
ROOTFS_TAR=$W/rootfs-bookworm-$(echo "$LIBS" | sha256sum | cut -c1-8).tar
if [ "$MODE" = build ] && [ ! -f "$ROOTFS_TAR" ]; then
  log "debootstrap bookworm rootfs (cached at $ROOTFS_TAR)"
  r=$W/rootfs.tmp; rm -rf "$r"
  debootstrap --variant=minbase --include="$LIBS" bookworm "$r" "$DEBIAN_MIRROR" > "$W/debootstrap.log" 2>&1 \
    || { tail -20 "$W/debootstrap.log"; die "debootstrap failed"; }
  chroot "$r" apt-get clean
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/log/* "$r"/tmp/* \
         "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/*
  tar -C "$r" --numeric-owner -cf "$ROOTFS_TAR.tmp" .
  mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"; rm -rf "$r"
fi

# --- dockerd ---------------------------------------------------------------------------------
# (one that answers on the socket counts too: its pid file may be gone with a cluster-down)
if ! { [ -f "$PIDS/dockerd.pid" ] && kill -0 "$(cat "$PIDS/dockerd.pid")" 2>/dev/null; } \
   && ! docker version >/dev/null 2>&1; then
  log "starting dockerd (data-root $DOCKER_DATA, socket $DOCKER_SOCK)"
  mkdir -p "$DOCKER_DATA" "$DOCKER_EXEC_ROOT"
  for d in "${FIXED_DIRS[@]}"; do [ -e "$d" ] || journal "dir $d"; done
  # no inherited fds beyond 0-2 (a flock'ed caller's lock fd would stay held by dockerd)
  ( close_fds; exec setsid dockerd --data-root "$DOCKER_DATA" --exec-root "$DOCKER_EXEC_ROOT" \
    --host "$DOCKER_HOST" --pidfile "$RUN/dockerd.pid" \
    --bridge none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --storage-driver overlay2 --exec-opt native.cgroupdriver=cgroupfs \
    >> "$LOGS/dockerd.log" 2>&1 < /dev/null ) &
  echo $! > "$PIDS/dockerd.pid"
  for i in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
  docker version >/dev/null 2>&1 || { tail -20 "$LOGS/dockerd.log"; die "dockerd did not start"; }
fi

# --- push: the images this script built, to REGISTRY --------------------------------------
if [ "$MODE" = push ]; then
  if [ "${REGISTRY%/}" = "$LOCAL_REGISTRY" ] && [ -s "$REGISTRY_AUTH/password" ]; then
    export DOCKER_CONFIG=$REGISTRY_AUTH/docker   # the local registry's login, not the user's ~/.docker
    docker login -u tfe --password-stdin "$LOCAL_REGISTRY" < "$REGISTRY_AUTH/password" >/dev/null
  fi
  for img in "$WORKER_IMAGE" "$OPERATOR_IMAGE"; do
    docker image inspect "$img" >/dev/null 2>&1 || die "$img not built here: run make images first"
    dst=${REGISTRY%/}/$img
    log "docker push $dst"
    docker tag "$img" "$dst"
    docker push -q "$dst" >/dev/null || die "docker push $dst failed (docker login to the registry? DOCKER_HOST=$DOCKER_HOST)"
    echo "$dst $(docker image inspect -f '{{join .RepoDigests " "}}' "$dst" | tr ' ' '\n' | grep -F "${dst%:*}@" | head -1)"
  done
  if [ "${REGISTRY%/}" = "$LOCAL_REGISTRY" ] && docker image inspect "$S3_TEST_IMAGE" >/dev/null 2>&1; then
    docker tag "$S3_TEST_IMAGE" "$LOCAL_REGISTRY/$S3_TEST_IMAGE"
    docker push -q "$LOCAL_REGISTRY/$S3_TEST_IMAGE" >/dev/null || die "docker push $LOCAL_REGISTRY/$S3_TEST_IMAGE failed"
    log "pushed $LOCAL_REGISTRY/$S3_TEST_IMAGE (tests only)"
  fi
  exit 0
fi

# --- 2. base images --------------------------------------------------------------------------
base_image() { # 3.10 -> tfe-operator/base-python:3.10-bookworm
  local v=$1 py tag=tfe-operator/base-python:$1-bookworm stamp r
  py=$(pyenv_python "$v")
  stamp="$(sha256sum "$ROOTFS_TAR" | cut -c1-16)-$(basename "$py")"
  if [ "$(docker image inspect -f '{{index .Config.Labels "tfe.base"}}' "$tag" 2>/dev/null)" = "$stamp" ]; then
    echo "$tag"; return 0
  fi
  log "building $tag from debootstrap rootfs + $py" >&2
  r=$W/base-$v.tmp; rm -rf "$r"; mkdir -p "$r"
  tar -C "$r" -xf "$ROOTFS_TAR"
  # CPython (shared libpython, RUNPATH is only a hint: ldconfig finds /usr/local/lib)
  tar -C "$py" -cf - --exclude='__pycache__' --exclude="lib/python$v/test" \
      --exclude="lib/python$v/idlelib" --exclude="lib/python$v/tkinter" \
      --exclude="lib/python$v/lib-dynload/_tkinter*" --exclude="lib/python$v/site-packages" \
      --exclude='bin/idle*' --exclude='bin/2to3*' --exclude='*.a' . | tar -C "$r/usr/local" -xf -
  mkdir -p "$r/usr/local/lib/python$v/site-packages"
  local sp=$py/lib/python$v/site-packages p
  for p in pip setuptools _distutils_hack pkg_resources distutils-precedence.pth; do
    [ -e "$sp/$p" ] && cp -a "$sp/$p" "$r/usr/local/lib/python$v/site-packages/"
  done
  cp -a "$sp"/pip-*.dist-info "$sp"/setuptools-*.dist-info "$r/usr/local/lib/python$v/site-packages/"
  # console scripts carry the pyenv path in their shebang
  grep -lI "^#!$py/bin/" "$r"/usr/local/bin/* 2>/dev/null | while read -r f; do
    sed -i "1s|^#!$py/bin/|#!/usr/local/bin/|" "$f"; done
  ln -sf "python$v" "$r/usr/local/bin/python"; ln -sf "python$v" "$r/usr/local/bin/python3"
  chroot "$r" ldconfig
  chroot "$r" /usr/local/bin/python3 -c "import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid, readline" \
    || die "python $v does not run in the bookworm rootfs"
  tar -C "$r" --numeric-owner -cf - . | docker import \
    -c 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' -c "LABEL tfe.base=$stamp" - "$tag" >/dev/null
  rm -rf "$r"
  echo "$tag"
}
BASE310=$(base_image 3.10)
BASE311=$(base_image 3.11)

# --- 3. build contexts with wheelhouses ------------------------------------------------------
context() { # name pyver requirements-file paths...
  local name=$1 v=$2 req=$3 py ctx=$W/ctx-$1; shift 3
  py=$(pyenv_python "$v")/bin/python$v
  mkdir -p "$ctx/requirements/wheels"
  cp "$REPO/VERSION" "$ctx/"
  local p; for p in "$@"; do
    rm -rf "${ctx:?}/$p"
    tar -C "$REPO" --exclude='*.egg-info' --exclude='__pycache__' --exclude="$p/build" -cf - "$p" | tar -C "$ctx" -xf -
  done
  cp "$REPO/$req" "$ctx/requirements/"
  local stamp srcs=(); for p in "$@"; do srcs+=("$REPO/$p"); done
  stamp=$(cat "$REPO/$req" "$REPO"/{client,worker-image,operator}/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
  if [ "$(cat "$ctx/requirements/wheels/.stamp" 2>/dev/null)" != "$stamp" ]; then
    log "wheelhouse for $name (python $v, $req)" >&2
    rm -rf "$ctx/requirements/wheels"; mkdir -p "$ctx/requirements/wheels"
    PIP_CACHE_DIR=${PIP_CACHE_DIR:-$CACHE/pip} "$py" -m pip wheel -q -w "$ctx/requirements/wheels" \
      -r "$REPO/$req" "${srcs[@]}" "setuptools>=61" wheel >&2
    rm -f "$ctx"/requirements/wheels/tfe_*.whl   # the packages themselves come from the sources
    echo "$stamp" > "$ctx/requirements/wheels/.stamp"
  fi
  echo "$ctx"
}

build() { # tag dockerfile base context [more docker build args]
  log "docker build $1 (base $3)"
  docker build -q --network none -f "$2" -t "$1" \
    --build-arg BASE_IMAGE="$3" --build-arg PIP_NO_INDEX=1 \
    --build-arg PIP_FIND_LINKS=/tmp/requirements/wheels "${@:5}" "$4" > /dev/null
}

# tfe-guard: built on the host (cached Go modules), wrapped in an image for the guard stage
make -C "$REPO" --no-print-directory guard >&2
GUARD_IMAGE=tfe-operator/guard-bin:$VERSION
GCTX=$W/ctx-guard; rm -rf "$GCTX"; mkdir -p "$GCTX"
cp "$REPO/build/tfe-guard" "$GCTX/tfe-guard"
printf 'ARG BASE\nFROM ${BASE}\nCOPY tfe-guard /out/tfe-guard\n' > "$GCTX/Dockerfile"
log "docker build $GUARD_IMAGE (build/tfe-guard)"
docker build -q --network none -t "$GUARD_IMAGE" --build-arg BASE="$BASE310" "$GCTX" > /dev/null

[ -f "$REPO/requirements/worker.txt" ] && WREQ=requirements/worker.txt || WREQ=requirements/worker.in
[ -f "$REPO/requirements/operator.txt" ] && OREQ=requirements/operator.txt || OREQ=requirements/operator.in
WCTX=$(context worker 3.10 "$WREQ" client worker-image)
[ "$WREQ" = requirements/worker.txt ] || cp "$WCTX/requirements/worker.in" "$WCTX/requirements/worker.txt"
build "$WORKER_IMAGE" "$WCTX/worker-image/Dockerfile" "$BASE310" "$WCTX" \
  --build-arg GO_IMAGE="$GUARD_IMAGE" --build-arg VERSION="$VERSION"
OCTX=$(context operator 3.11 "$OREQ" client operator)
[ "$OREQ" = requirements/operator.txt ] || cp "$OCTX/requirements/operator.in" "$OCTX/requirements/operator.txt"
build "$OPERATOR_IMAGE" "$OCTX/operator/Dockerfile" "$BASE311" "$OCTX"

# the S3 test server as a one-binary image (tests/cluster/test_s3_cluster.py), no base
"$HERE/build.sh" gofakes3 >&2
if ! docker image inspect "$S3_TEST_IMAGE" >/dev/null 2>&1; then
  log "building $S3_TEST_IMAGE (test-only)"
  python3 "$HERE/mkimage.py" "$W/gofakes3.tar" --tag "$S3_TEST_IMAGE" --entrypoint '["/gofakes3"]' \
    --user 65534:65534 "$("$HERE/build.sh" path)/gofakes3-$GOFAKES3_VERSION:/gofakes3"
  docker load -q -i "$W/gofakes3.tar" >/dev/null
  rm -f "$W/gofakes3.tar"
fi

# smoke the images themselves
docker run --rm --network none --entrypoint python3 "$WORKER_IMAGE" -c \
  "import sys, os, tensorflow as tf, tf_encrypted, numpy, tfe_worker, tfe_client; \
assert sys.version_info[:2]==(3,10) and tf.__version__=='2.9.1' and numpy.__version__=='1.23.5', \
(sys.version, tf.__version__, numpy.__version__); assert os.getuid()==10001, os.getuid(); print('worker image ok')"
docker run --rm --network none --entrypoint /bin/sh "$WORKER_IMAGE" -c \
  "tfe-guard --version && iptables-nft --version" \
  || die "the worker image lacks tfe-guard or iptables-nft"
docker run --rm --network none --entrypoint python3 "$OPERATOR_IMAGE" -c \
  "import sys, os, kopf, tfe_operator, tfe_client; assert sys.version_info[:2]>=(3,11); \
assert os.getuid()!=0; print('operator image ok')"

# --- 5. import into the cluster's containerd ------------------------------------------------
ctr_config_digest() { # image -> config digest (= docker image ID) of that image in containerd
  local d
  d=$(ctr -a "$CTR_SOCK" -n k8s.io images ls | awk -v n="docker.io/$1" '$1==n{print $3}')
  [ -n "$d" ] || return 0
  ctr -a "$CTR_SOCK" -n k8s.io content get "$d" 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin).get("config",{}).get("digest",""))' 2>/dev/null || true
}
if [ -S "$CTR_SOCK" ]; then
  for img in "$WORKER_IMAGE" "$OPERATOR_IMAGE"; do
    if [ "$(ctr_config_digest "$img")" = "$(docker image inspect -f '{{.Id}}' "$img")" ]; then
      log "$img already in the cluster"
    else
      log "importing $img into the cluster's containerd"
      docker save "$img" | ctr -a "$CTR_SOCK" -n k8s.io images import - > /dev/null
    fi
  done
else
  log "cluster not running: images built but not imported (run make cluster-up, then make images)"
fi
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^tfe-operator/(worker|operator):$VERSION "
