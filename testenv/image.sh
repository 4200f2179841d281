#!/usr/bin/env bash
# Builds the capture-pod image (capture-pod/Dockerfile) without Docker and without a registry, and
# writes it as a docker-archive that containerd imports with its name:
#   ctr -n k8s.io images import "$(testenv/image.sh)"
#
#   1. base: `debootstrap --variant=minbase bookworm` from this machine's Debian mirror, made an
#      image (localhost/kubeshot-base:bookworm) with buildah; the rootfs tarball is cached;
#   2. `buildah bud --build-arg BASE_IMAGE=localhost/kubeshot-base:bookworm` from the repository
#      root (chroot isolation, the host's network: RUN steps reach the apt mirror and PyPI);
#   3. a smoke check as user 10001: the engine imports, and a real capture of a page served on
#      127.0.0.2 by this script writes a PNG;
#   4. `buildah push` to .testenv/images/capture-<sha12>.tar, <sha12> a hash of the inputs (the
#      Dockerfile, pyproject.toml, capture-pod/ (its requirements.txt is the image's lock),
#      operator/kubeshot/{__init__.py,py.typed,logs.py,api/}, this script, the image name; not
#      README.md, which only fills the package's metadata).
#
# Idempotent: when the archive for the current inputs exists it prints its path and exits at once.
# The archive path is the last line on stdout; progress and timings go to stderr.
#
#   testenv/image.sh               build (or reuse) and print the archive path
#   testenv/image.sh --print-path  print the archive path only (no build; it may not exist yet)
#   testenv/image.sh --force       rebuild the image although the archive exists
#   testenv/image.sh --force-base  debootstrap the base again too (implies --force)
#   testenv/image.sh --operator    also build operator/Dockerfile into operator-<sha12>.tar
#   testenv/image.sh --no-smoke    skip the smoke check
#
# The image is named as the operator's default capture image (CAPTURE_REPOSITORY in
# operator/kubeshot/operator/settings.py, tagged with pyproject.toml's version: today
# ghcr.io/kubeshot/capture:0.1.0) so that pods with imagePullPolicy IfNotPresent run it without a
# pull; KUBESHOT_CAPTURE_IMAGE names it otherwise. Both images carry that version as their
# org.opencontainers.image.version label.
# The operator image is named as the chart's default, ghcr.io/kubeshot/kubeshot:<appVersion>
# (KUBESHOT_OPERATOR_IMAGE names it otherwise).
# KUBESHOT_DEBIAN_MIRROR / KUBESHOT_DEBIAN_SECURITY_MIRROR override the mirrors found in
# /etc/apt/sources.list{,.d}. Needs root and the Debian packages debootstrap and buildah.
# buildah's storage lives in .testenv/images/containers-storage/<driver> (git-ignored), not in
# /var/lib/containers: driver overlay, or KUBESHOT_STORAGE_DRIVER=vfs where overlayfs is missing
# (slow and large: every layer a full copy). Past KUBESHOT_IMAGE_STORAGE_MAX_GB (8) it is emptied.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
IMAGES="$ROOT/.testenv/images"
SUITE=bookworm
BASE_REF="localhost/kubeshot-base:$SUITE"
BASE_TAR="$IMAGES/debian-$SUITE-minbase.tar"
STORAGE_DRIVER="${KUBESHOT_STORAGE_DRIVER:-overlay}"
# What the capture image is built from (the .dockerignore excludes caches).
CAPTURE_INPUTS=(capture-pod pyproject.toml operator/kubeshot/__init__.py operator/kubeshot/py.typed
  operator/kubeshot/logs.py operator/kubeshot/api testenv/image.sh)
OPERATOR_INPUTS=(operator capture-pod pyproject.toml testenv/image.sh)

say() { printf 'image: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

project_version() { # pyproject.toml's version: the one source of the release's version
  local version
  version="$(sed -n 's/^version = "\([^"]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -n1)"
  [[ -n "$version" ]] || die "no version in pyproject.toml"
  echo "$version"
}

capture_ref() { # the operator's default: CAPTURE_REPOSITORY:<version>
  if [[ -n "${KUBESHOT_CAPTURE_IMAGE:-}" ]]; then echo "$KUBESHOT_CAPTURE_IMAGE"; return; fi
  local repository
  repository="$(sed -n 's/^CAPTURE_REPOSITORY = "\([^"]*\)".*/\1/p' "$ROOT/operator/kubeshot/operator/settings.py")"
  [[ -n "$repository" ]] || die "no CAPTURE_REPOSITORY in operator/kubeshot/operator/settings.py; set KUBESHOT_CAPTURE_IMAGE"
  echo "$repository:$(project_version)"
}

operator_ref() { # the chart's default: image.registry/image.repository:appVersion
  if [[ -n "${KUBESHOT_OPERATOR_IMAGE:-}" ]]; then echo "$KUBESHOT_OPERATOR_IMAGE"; return; fi
  local version
  version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/kubeshot/Chart.yaml")"
  [[ -n "$version" ]] || die "no appVersion in charts/kubeshot/Chart.yaml; set KUBESHOT_OPERATOR_IMAGE"
  echo "ghcr.io/kubeshot/kubeshot:$version"
}

inputs_hash() { # <image ref> <paths...>: sha256 over every input file's path and content
  local ref="$1"; shift
  {
    echo "$ref"
    (cd "$ROOT" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-12
}

archive_path() { # <name> <ref> <inputs...>
  local name="$1"; shift
  echo "$IMAGES/$name-$(inputs_hash "$@").tar"
}

# The first URI of this machine's apt sources serving suite $1 (one-line and deb822 formats).
apt_uri() {
  local suite="$1" f uri
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    uri="$(awk -v suite="$suite" '
      function stanza() {  # deb822: one paragraph, its fields in any order
        if (types ~ /(^|[[:space:]])deb([[:space:]]|$)/ && (" " suites " ") ~ (" " suite " ")) {
          split(uris, u, " "); print u[1]; found = 1; exit
        }
        types = ""; suites = ""; uris = ""
      }
      /^[[:space:]]*deb[[:space:]]/ {
        sub(/\[[^]]*\][[:space:]]*/, ""); if ($3 == suite) { print $2; found = 1; exit }
      }
      /^Types:/ { types = substr($0, 7) }
      /^Suites:/ { suites = substr($0, 8) }
      /^URIs:/ { uris = substr($0, 6) }
      /^[[:space:]]*$/ { stanza() }
      END { if (!found) stanza() }
    ' "$f")"
    if [[ -n "$uri" ]]; then echo "$uri"; return; fi
  done
}

timed() { # <label> <command...>: runs the command, reports its duration
  local label="$1" start=$SECONDS; shift
  say "$label ..."
  "$@"
  say "$label: $((SECONDS - start))s"
}

bah() { buildah --storage-driver "$STORAGE_DRIVER" --root "$IMAGES/containers-storage/$STORAGE_DRIVER" \
  --runroot "$IMAGES/containers-run/$STORAGE_DRIVER" "$@"; }

debootstrap_base() { # the rootfs tarball: minbase, apt sources with updates and security, slimmed
  local mirror security dir
  mirror="${KUBESHOT_DEBIAN_MIRROR:-$(apt_uri "$SUITE")}"; mirror="${mirror:-http://deb.debian.org/debian}"
  security="${KUBESHOT_DEBIAN_SECURITY_MIRROR:-$(apt_uri "$SUITE-security")}"
  security="${security:-http://deb.debian.org/debian-security}"
  dir="$IMAGES/rootfs.partial"
  # A debootstrap killed half-way may leave /proc or /sys mounted inside: never rm -rf through them.
  awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l
  rm -rf "$dir"; mkdir -p "$dir"
  say "debootstrap --variant=minbase $SUITE from $mirror"
  debootstrap --variant=minbase "$SUITE" "$dir" "$mirror" >"$IMAGES/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $IMAGES/debootstrap.log"
  cat >"$dir/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb $security $SUITE-security main
EOF
  # As debian:*-slim: no documentation, manual pages or translations from later installs either.
  cat >"$dir/etc/dpkg/dpkg.cfg.d/kubeshot-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
  find "$dir/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
  find "$dir/var/log" -type f -delete
  # debootstrap copied this machine's resolv.conf and hostname; runtimes mount their own.
  : >"$dir/etc/resolv.conf"
  : >"$dir/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$dir/etc/hosts"
  rm -rf "${dir:?}"/usr/share/{info,man,groff,lintian,linda,locale}/* "${dir:?}"/var/cache/apt/*.bin \
    "${dir:?}"/var/cache/apt/archives/*.deb "${dir:?}"/var/lib/apt/lists/* \
    "${dir:?}"/{dev,proc,sys,run,tmp}/*
  tar --numeric-owner --xattrs -C "$dir" -cf "$BASE_TAR.partial" .
  mv "$BASE_TAR.partial" "$BASE_TAR"
  rm -rf "$dir"
}

import_base() { # the rootfs tarball as $BASE_REF
  local ctr mnt
  ctr="$(bah from --quiet scratch)"
  mnt="$(bah mount "$ctr")"
  tar --numeric-owner --xattrs -C "$mnt" -xpf "$BASE_TAR"
  bah umount "$ctr" >/dev/null
  bah config --os linux --arch "$(dpkg --print-architecture)" --cmd '["bash"]' \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label org.opencontainers.image.description="debootstrap --variant=minbase $SUITE (testenv/image.sh)" \
    "$ctr"
  bah commit --quiet --rm "$ctr" "$BASE_REF" >/dev/null
}

# pip inside RUN steps trusts what this machine trusts (a TLS-inspecting proxy's CA) and uses its
# index: the host's CA bundle is mounted read-only over the image's empty /mnt (a mount on an
# existing folder leaves nothing in the layers) and handed to the Dockerfiles' `ARG PIP_CERT`.
build_args() {
  local mnt="$IMAGES/build-mnt" bundle=/etc/ssl/certs/ca-certificates.crt
  BUILD_ARGS=(--build-arg "BASE_IMAGE=$BASE_REF" --build-arg "KUBESHOT_VERSION=$(project_version)")
  rm -rf "$mnt"; mkdir -p "$mnt"
  if [[ -f "$bundle" ]]; then
    cp -L "$bundle" "$mnt/ca.crt"
    BUILD_ARGS+=(--volume "$mnt:/mnt:ro" --build-arg PIP_CERT=/mnt/ca.crt)
  fi
  if [[ -n "${PIP_INDEX_URL:-}" ]]; then BUILD_ARGS+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL"); fi
}

bud() { # <name> <dockerfile> <ref>; --layers keeps each step as cache: a code change rebuilds little
  local log="$IMAGES/build-$1.log" previous; shift
  previous="$(bah images --quiet --no-trunc "$2" 2>/dev/null || true)"
  bah bud --isolation chroot --network host --layers --format docker "${BUILD_ARGS[@]}" \
    -f "$ROOT/$1" -t "$2" "$ROOT" >"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; die "buildah bud -f $1 failed; see $log"; }
  # The image this one replaces (now untagged) goes; the cached steps below it stay.
  if [[ -n "$previous" && "$previous" != "$(bah images --quiet --no-trunc "$2")" ]]; then
    bah rmi "$previous" >/dev/null 2>&1 || true
  fi
}

# As user 10001, as the operator runs it: the engine imports, Playwright's driver starts from the
# compile cache the image holds for this user, Chromium starts, and
# `python -m kubeshot_capture` captures a page served here on 127.0.0.2 (the pod's entrypoint,
# its default policy with 127.0.0.2 opened, the artifact written to a file).
smoke() {
  local ref="$1" ctr work port server rc=0
  work="$(mktemp -d "$IMAGES/smoke.XXXXXX")"
  chmod 0777 "$work"
  printf '<!doctype html><title>smoke</title><h1>kubeshot capture image</h1>\n' >"$work/index.html"
  python3 -m http.server --bind 127.0.0.2 --directory "$work" 0 >"$work/server.log" 2>&1 &
  server=$!
  for _ in $(seq 50); do
    port="$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$work/server.log" | head -n1)"
    [[ -n "$port" ]] && break
    sleep 0.1
  done
  [[ -n "$port" ]] || { kill "$server"; die "smoke: the test page server did not start"; }
  cat >"$work/request.json" <<EOF
{"options": {"url": "http://127.0.0.2:$port/index.html", "format": "png"},
 "policy": {"network": {"allowedCIDRs": ["127.0.0.2/32"], "allowedPorts": [80, 443, $port]}}}
EOF
  ctr="$(bah from --quiet --pull-never "$ref")"
  run_in() { bah run --isolation chroot --network host --user 10001:10001 \
    --volume "$work:/smoke" "$@"; }
  {
    # shellcheck disable=SC2016 # expanded by the container's shell
    run_in "$ctr" -- sh -c 'test "$(id -u)" = 10001 && ! find / -xdev -perm /6000 -type f | grep .' \
      && run_in "$ctr" -- python -c 'import kubeshot_capture.pod, kubeshot_capture.engine' \
      && run_in --env NODE_DEBUG_NATIVE=COMPILE_CACHE "$ctr" -- python -c \
        'from playwright.sync_api import sync_playwright; sync_playwright().start().stop()' \
        2>&1 | grep 'coreBundle.js.*success' >/dev/null \
      && run_in "$ctr" -- chromium --headless --no-sandbox --disable-gpu --dump-dom about:blank \
        | grep -q '<body>' \
      && run_in --env KUBESHOT_REQUEST=/smoke/request.json --env KUBESHOT_OUTPUT=/smoke/out.png \
        --env KUBESHOT_TERMINATION_LOG=/smoke/termination-log --env KUBESHOT_NO_SANDBOX=1 \
        "$ctr" -- python -m kubeshot_capture \
      && [[ "$(head -c 8 "$work/out.png" | od -An -tx1 | tr -d ' \n')" == 89504e470d0a1a0a ]]
  } >"$work/smoke.log" 2>&1 || rc=$?
  kill "$server" 2>/dev/null || true
  bah rm "$ctr" >/dev/null
  if [[ "$rc" != 0 ]]; then
    cat "$work/smoke.log" "$work/termination-log" >&2 2>/dev/null || true
    die "smoke check failed (work folder kept: $work)"
  fi
  say "smoke: uid 10001, no setuid files, engine imports, the driver's compile cache is read," \
    "chromium runs, captured a PNG" \
    "($(stat -c %s "$work/out.png") bytes): $(cat "$work/termination-log")"
  rm -rf "$work"
}

smoke_operator() { # as user 10001: the CLI with every subcommand imports
  local ctr rc=0
  ctr="$(bah from --quiet --pull-never "$1")"
  bah run --isolation chroot --network host --user 10001:10001 "$ctr" -- kubeshot --help \
    >"$IMAGES/smoke-operator.log" 2>&1 || rc=$?
  bah rm "$ctr" >/dev/null
  [[ "$rc" == 0 ]] || { cat "$IMAGES/smoke-operator.log" >&2; die "operator smoke check failed"; }
  say "smoke: kubeshot --help runs as uid 10001"
}

push() { # <ref> <archive>: docker-archive with the name in RepoTags (ctr import keeps it)
  rm -f "$2.partial"
  bah push --quiet "$1" "docker-archive:$2.partial:$1" >/dev/null
  mv "$2.partial" "$2"
}

build_image() { # <name> <dockerfile> <ref> <archive>
  local name="$1" dockerfile="$2" ref="$3" archive="$4" size
  timed "buildah bud $dockerfile -> $ref" bud "$name" "$dockerfile" "$ref"
  if [[ "$SMOKE" == 1 && "$name" == capture ]]; then timed "smoke check" smoke "$ref"; fi
  if [[ "$SMOKE" == 1 && "$name" == operator ]]; then timed "smoke check" smoke_operator "$ref"; fi
  timed "buildah push docker-archive:${archive#"$ROOT"/}" push "$ref" "$archive"
  size="$(bah images --format '{{.Size}}' "$ref" 2>/dev/null || true)"
  say "$ref: image ${size:-?}, archive $(du -h "$archive" | cut -f1)"
  find "$IMAGES" -maxdepth 1 -name "$name-*.tar" ! -path "$archive" -delete  # older inputs
}

print_paths() {
  if [[ "$OPERATOR" == 1 ]]; then echo "$OPERATOR_ARCHIVE"; fi
  echo "$ARCHIVE"
}

wanted() { # are the archives for the current inputs there?
  REF="$(capture_ref)"
  OPERATOR_REF="$(operator_ref)"
  ARCHIVE="$(archive_path capture "$REF" "${CAPTURE_INPUTS[@]}")"
  OPERATOR_ARCHIVE="$(archive_path operator "$OPERATOR_REF" "${OPERATOR_INPUTS[@]}")"
  [[ -f "$ARCHIVE" ]] && { [[ "$OPERATOR" == 0 ]] || [[ -f "$OPERATOR_ARCHIVE" ]]; }
}

main() {
  FORCE=0 FORCE_BASE=0 OPERATOR=0 SMOKE=1
  local arg print=0 tool start storage_mb
  for arg in "$@"; do
    case "$arg" in
      --print-path) print=1 ;;
      --force) FORCE=1 ;;
      --force-base) FORCE=1 FORCE_BASE=1 ;;
      --operator) OPERATOR=1 ;;
      --no-smoke) SMOKE=0 ;;
      *) die "unknown argument: $arg (see the header of $0)" ;;
    esac
  done
  if wanted && [[ "$FORCE" == 0 ]] || [[ "$print" == 1 ]]; then print_paths; return; fi

  [[ "$(id -u)" == 0 ]] || die "needs root (debootstrap, buildah's chroot isolation)"
  for tool in debootstrap buildah; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install debootstrap buildah (make setup)"
  done
  mkdir -p "$IMAGES"
  # One build at a time (the node-tier fixture and `make testenv` may start together); whoever
  # held the lock may have built what is wanted.
  exec 9>"$IMAGES/.lock"
  flock --nonblock 9 || { say "waiting for another testenv/image.sh"; flock 9; }
  if wanted && [[ "$FORCE" == 0 ]]; then print_paths; return; fi
  start=$SECONDS

  # Every build leaves its steps as cache (--layers) and replaced steps stay behind: past
  # $KUBESHOT_IMAGE_STORAGE_MAX_GB (default 8) the storage is emptied (the base re-imports in
  # seconds from its tarball; the next build is a cold one without debootstrap).
  storage_mb="$(du -sm "$IMAGES/containers-storage" 2>/dev/null | cut -f1 || true)"
  if [[ "$FORCE_BASE" == 1 ]] || (( ${storage_mb:-0} > ${KUBESHOT_IMAGE_STORAGE_MAX_GB:-8} * 1024 )); then
    say "emptying buildah's storage (${storage_mb:-0} MB)"
    bah rmi --all --force >/dev/null 2>&1 || true
  fi
  if [[ "$FORCE_BASE" == 1 ]]; then rm -f "$BASE_TAR"; fi
  if ! bah inspect --type image "$BASE_REF" >/dev/null 2>&1; then
    if [[ ! -f "$BASE_TAR" ]]; then timed "debootstrap (cached in ${BASE_TAR#"$ROOT"/})" debootstrap_base; fi
    timed "import the rootfs as $BASE_REF" import_base
  fi
  build_args

  if [[ "$FORCE" == 1 ]] || [[ ! -f "$ARCHIVE" ]]; then
    build_image capture capture-pod/Dockerfile "$REF" "$ARCHIVE"
  fi
  if [[ "$OPERATOR" == 1 ]] && { [[ "$FORCE" == 1 ]] || [[ ! -f "$OPERATOR_ARCHIVE" ]]; }; then
    build_image operator operator/Dockerfile "$OPERATOR_REF" "$OPERATOR_ARCHIVE"
  fi
  say "done in $((SECONDS - start))s"
  print_paths
}

# Everything runs from main (bash has read every function before it starts), so replacing this
# file while a build runs does not change that build.
main "$@"
