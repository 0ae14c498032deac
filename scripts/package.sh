#!/usr/bin/env bash
# Builds the Debian package: build/clusterpeer_VERSION_ARCH.deb, from the
# binaries built here, their man pages and bash completions (printed by
# the binaries from their own help), deploy/'s units, dashboard and rules,
# packed by nfpm (a Go tool of this module: go tool nfpm), then checked by
# lintian where it is installed. Prints the package's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${VERSION:?VERSION is set by make package}" "${REVISION:?REVISION is set by make package}"
GO=${GO:-go}
ARCH=$($GO env GOARCH)
STAGE=$PWD/build/stage
rm -rf "$STAGE"
mkdir -p "$STAGE"

pkg=github.com/clusterpeer/clusterpeer/cmd/internal/cli
CGO_ENABLED=0 $GO build -trimpath -buildmode=pie -ldflags "-s -w -X $pkg.version=$VERSION -X $pkg.revision=$REVISION" \
  -o "$STAGE/" ./cmd/demux ./cmd/tunnel
for b in demux tunnel; do
  "$STAGE/$b" manpage | gzip -9n >"$STAGE/$b.8.gz"
  "$STAGE/$b" completion bash >"$STAGE/$b.bash"
done
when=$(git log -1 --format=%cD 2>/dev/null || date -R)
printf 'clusterpeer (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- clusterpeer maintainers <maintainers@clusterpeer.invalid>  %s\n' \
  "$VERSION" "$REVISION" "$when" | gzip -9n >"$STAGE/changelog.gz"

deb=build/clusterpeer_${VERSION}_${ARCH}.deb
rm -f "$deb"
(cd deploy && VERSION=$VERSION ARCH=$ARCH $GO tool nfpm package --config nfpm.yaml --packager deb --target "../$deb" >/dev/null)
if [ "${LINTIAN:-on}" = off ]; then
  echo "package: lintian not run (LINTIAN=off)" >&2
elif command -v lintian >/dev/null; then
  lintian --fail-on error "$deb" >&2 || { echo "package: lintian reports errors (above)" >&2; exit 1; }
else
  echo "package: lintian not installed; not checked (make deps installs it)" >&2
fi
echo "$deb"
