#!/usr/bin/env bash
# Vendors DuckDuckGo's autoconsent (npm @duckduckgo/autoconsent, MPL-2.0): its standalone content
# script (the maintained cookie-consent rules compiled in) and its licence, into
# capture-pod/kubeshot_capture/vendor/autoconsent/, where hideCookieBanners reads it. Checked in,
# so that neither the images nor CI need npm; run this to move to a newer release:
#   hack/vendor-autoconsent.sh [VERSION]
# The tarball comes through npm (the registry's own client) and must match the integrity npm
# reports for that version.
set -euo pipefail

VERSION="${1:-16.23.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/capture-pod/kubeshot_capture/vendor/autoconsent"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
expected="$(npm view "@duckduckgo/autoconsent@$VERSION" dist.integrity)"
tarball="$(npm pack --silent "@duckduckgo/autoconsent@$VERSION")"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
[[ "$actual" == "$expected" ]] || { echo "integrity mismatch: $actual != $expected" >&2; exit 1; }
tar xzf "$tarball" package/dist/autoconsent.standalone.js package/LICENSE
mkdir -p "$DEST"
cp package/dist/autoconsent.standalone.js package/LICENSE "$DEST/"
printf '@duckduckgo/autoconsent %s %s\n' "$VERSION" "$expected" >"$DEST/VERSION"
echo "vendored @duckduckgo/autoconsent $VERSION into $DEST"
