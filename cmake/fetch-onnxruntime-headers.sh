#!/usr/bin/env bash
# Puts ONNX Runtime's C/C++ API headers in DEST (default build/ort/include), for libcarseg's
# ONNX Runtime backend. The pinned onnxruntime wheel ships the library
# (onnxruntime/capi/libonnxruntime.so.*) but no headers, and of the registries this project
# reaches (PyPI, Debian bookworm, npm) only the npm registry has them: inside the Unity package
# com.github.asus4.onnxruntime (ONNX Runtime's official headers, in its iOS framework). The C API
# is versioned (ORT_API_VERSION) and backward compatible, so headers of API 29 work with the
# wheel's newer library (libcarseg asks the library for API 29 at run time and says so if it
# lacks it). The tarball is checked against a pinned sha256.
#
# Without npm (and not root to install it), or when the download fails, it says why and exits
# 0: libcarseg then builds without the ONNX Runtime backend (`--backend onnx` says so).
set -euo pipefail
DEST=${1:-build/ort/include}
PKG=com.github.asus4.onnxruntime@0.4.9
SHA256=e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d
HEADERS="package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers"

[ -f "$DEST/onnxruntime_cxx_api.h" ] && exit 0
skip() { echo "== ONNX Runtime headers: $1; building without the ONNX Runtime backend" >&2; exit 0; }
if ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== apt-get install npm (for ONNX Runtime's headers)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; } \
      || skip "apt-get install npm failed"
  else
    skip "npm not found (apt-get install npm)"
  fi
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "== npm pack $PKG (ONNX Runtime's C/C++ headers, about 150 MB once)"
(cd "$tmp" && npm pack "$PKG" --silent >/dev/null 2>npm.err) || skip "npm pack failed: $(head -c 300 "$tmp/npm.err")"
tgz=$(ls "$tmp"/*.tgz)
echo "$SHA256  $tgz" | sha256sum -c --quiet - || skip "$PKG: sha256 does not match the pinned one"
tar -xzf "$tgz" -C "$tmp" "$HEADERS"
mkdir -p "$DEST"
cp "$tmp/$HEADERS"/onnxruntime_*.h "$tmp/$HEADERS"/cpu_provider_factory.h "$DEST"/
grep -q "define ORT_API_VERSION" "$DEST/onnxruntime_c_api.h"
echo "== ONNX Runtime headers in $DEST (C API $(sed -n 's/^#define ORT_API_VERSION //p' "$DEST/onnxruntime_c_api.h"))"
