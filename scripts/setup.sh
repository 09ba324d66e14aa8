#!/usr/bin/env bash
# Idempotent setup of a Debian 12 machine for MaskForge (called by `make setup`):
#  1. QGIS 3.40 LTR from Debian's bookworm-backports, with xvfb for headless tests (apt, only when missing);
#  2. .venv from Debian's Python with --system-site-packages (so it sees QGIS),
#     with the pinned requirements (only when they changed);
#  3. this folder linked into the default QGIS profile as the plugin `maskforge`, enabled.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# QGIS 3.40 LTR: Debian 12 carries it in bookworm-backports (3.22 in bookworm itself is out of support).
qgis_version() { /usr/bin/python3 -c 'from qgis.core import Qgis; print(Qgis.QGIS_VERSION_INT)' 2>/dev/null || echo 0; }
if [ "$(qgis_version)" -lt 34000 ] || ! command -v qgis_process.bin >/dev/null 2>&1 \
   || ! command -v xvfb-run >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "setup: adding Debian's bookworm-backports to apt's sources (/etc/apt/sources.list.d/bookworm-backports.sources) for QGIS 3.40 LTR"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
  fi
  echo "setup: installing QGIS 3.40 LTR from bookworm-backports (qgis python3-qgis qgis-providers) and xvfb"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports \
    qgis python3-qgis qgis-providers xvfb python3-venv >/dev/null
  if [ "$(qgis_version)" -lt 34000 ]; then
    echo "setup: QGIS 3.40 could not be installed (found $(qgis_version)); MaskForge is tested on 3.40 LTR" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned requirements into .venv (torch is large: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# Link into the QGIS profile and enable, so qgis and qgis_process load it.
profile="${QGIS_PROFILE_DIR:-$HOME/.local/share/QGIS/QGIS3/profiles/default}"
mkdir -p "$profile/python/plugins" "$profile/QGIS"
ln -sfn "$ROOT" "$profile/python/plugins/maskforge"
ini="$profile/QGIS/QGIS3.ini"
touch "$ini"
if ! grep -q '^maskforge=true' "$ini"; then
  /usr/bin/python3 - "$ini" <<'PY'
import configparser, sys
path = sys.argv[1]
cfg = configparser.RawConfigParser()
cfg.optionxform = str
cfg.read(path)
if not cfg.has_section("PythonPlugins"):
    cfg.add_section("PythonPlugins")
cfg.set("PythonPlugins", "maskforge", "true")
with open(path, "w") as f:
    cfg.write(f, space_around_delimiters=False)
PY
fi
echo "setup: ready (QGIS $(/usr/bin/python3 -c 'from qgis.core import Qgis; print(Qgis.QGIS_VERSION)' 2>/dev/null), plugin linked at $profile/python/plugins/maskforge)"
