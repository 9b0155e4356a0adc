#!/usr/bin/env bash
# Installs, from Debian/Ubuntu packages, what Copeau needs and the machine lacks:
#   mosquitto (MQTT broker), influxdb (influxd 1.6.7 on Debian 12), python3-venv, chromium with
#   chromium-driver (the kiosk's browser test drives /usr/bin/chromium through /usr/bin/chromedriver), and
#   postgresql (the tests also run the orders store on a PostgreSQL server of their own).
# Copeau starts its own copies of the servers on its own ports (see docs/operations.md); the system
# services that apt may start are not used.
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)  # the raw broker pipe in `make bench`
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)

if ! command -v python3 >/dev/null 2>&1; then
  need+=(python3)
elif ! python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "Copeau a besoin de Python ≥ 3.11 ; python3 est $(python3 -V 2>&1)." >&2
  echo "Copeau needs Python >= 3.11. Debian 12 and Ubuntu 24.04 have it; or set PYTHON=python3.12 for make." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need+=(python3-venv)
fi

[ ${#need[@]} -eq 0 ] && exit 0

echo "Copeau a besoin de paquets système manquants : ${need[*]}"
echo "Copeau needs missing system packages: ${need[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-get est introuvable : ce n'est pas une Debian/Ubuntu. Installez-les à la main, puis relancez." >&2
  echo "apt-get not found (not Debian/Ubuntu). Install them by hand, then run make again." >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
    echo "Installation avec sudo (votre mot de passe peut être demandé)…"
  else
    echo "Il faut être root (ou avoir sudo) pour installer : apt-get install ${need[*]}" >&2
    echo "Root (or sudo) is needed to run: apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
echo "Paquets installés : ${need[*]}"
