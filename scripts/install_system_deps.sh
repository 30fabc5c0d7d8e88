#!/usr/bin/env bash
# Open3D needs a few Debian libraries (GL, EGL, OpenMP, OSMesa). Install them when missing and we are root;
# otherwise say exactly what to install. Never fails the set-up: Open3D is optional (matplotlib fallback).
LIBS=(libgl1 libegl1 libgomp1 libusb-1.0-0 libosmesa6 libgl1-mesa-dri)
missing=()
for p in "${LIBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[setup] installing Open3D system libraries: ${missing[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >/dev/null 2>&1 \
    || echo "[setup] WARNING: apt-get could not install ${missing[*]}; Open3D rendering will fall back to matplotlib"
else
  echo "[setup] NOTE: Open3D needs: sudo apt-get install ${missing[*]} (visualization falls back to matplotlib until then)"
fi
