#!/usr/bin/env bash
# Installs the Debian packages agi-xmpp's `make run` and `make test` need, only when missing.
# prosody: the XMPP server `make run` starts when none is configured, and the tests' server.
# debootstrap: builds the Asterisk 22 lab for the end-to-end tests (tests/e2e/build_lab.sh).
# ejabberd: the second XMPP server the delivery tests run (its own node, never the system service).
# openssl: certificates for the local Prosody. espeak-ng, sox: regenerate sounds/ (make sounds).
# valgrind: the benchmark's instruction counts (make bench).
# chromium: the browser the CSRF/DNS-rebinding tests drive (make test, --browser).
set -euo pipefail
want=(prosody ejabberd debootstrap openssl)
[ "${1:-}" = "--sounds" ] && want+=(espeak-ng sox)
[ "${1:-}" = "--bench" ] && want+=(valgrind)
[ "${1:-}" = "--browser" ] && want+=(chromium)
missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian's package may try to start a system Prosody; agi-xmpp runs its own instances.
if command -v prosodyctl >/dev/null && pgrep -f '/usr/bin/prosody' >/dev/null 2>&1; then
  $SUDO prosodyctl stop >/dev/null 2>&1 || true
fi
# Likewise for ejabberd: the tests run private nodes (tests/xmpp_servers.py), never this one.
if command -v systemctl >/dev/null && systemctl is-active --quiet ejabberd 2>/dev/null; then
  $SUDO systemctl disable --now ejabberd >/dev/null 2>&1 || true
fi
