#!/usr/bin/env bash
# Build (once) the Debian sid chroot with Asterisk 22 used by the end-to-end tests (tests/e2e).
#
#   tests/e2e/build_lab.sh            # no-op when the chroot is already built
#
# Environment:
#   AGI_XMPP_LAB_DIR     chroot directory (default ~/.cache/agi-xmpp/asterisk-sid), outside the repo
#   AGI_XMPP_LAB_MIRROR  Debian mirror (default: the machine's own apt sources, else deb.debian.org)
#   AGI_XMPP_LAB_SUITE   Debian suite (default sid: the only one with Asterisk 22 as of 2026)
#
# The chroot is built in "$AGI_XMPP_LAB_DIR.tmp" and renamed on success, so a half-built chroot is
# never used. A leftover .tmp from a crashed build is removed, but only after checking that nothing
# is still mounted inside it (a recursive delete must never walk into the machine's /proc or /dev).
# Needs root (debootstrap, chroot, mount). Idempotent: run it as often as you like.
set -euo pipefail

LAB_DIR="${AGI_XMPP_LAB_DIR:-$HOME/.cache/agi-xmpp/asterisk-sid}"
LAB_DIR="${LAB_DIR%/}"
SUITE="${AGI_XMPP_LAB_SUITE:-sid}"
TMP_DIR="$LAB_DIR.tmp"
LOCK_FILE="$LAB_DIR.build.lock"
STAMP=etc/agi-xmpp-lab.stamp          # written inside the chroot once the finishing steps are done
PACKAGES=asterisk,asterisk-modules,asterisk-config,asterisk-core-sounds-en-gsm
OPTIONAL_PACKAGES="asterisk-moh-opsound-gsm"   # music on hold; installed only if the suite has it

log() { printf '[build_lab] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and mount need it)"

is_built() { [ -x "$1/usr/sbin/asterisk" ] && [ -x "$1/bin/sh" ]; }

# Everything we might have mounted inside a chroot, deepest first.
unmount_all() {
    local root="$1" m
    for m in dev/pts dev sys proc; do
        if mountpoint -q "$root/$m" 2>/dev/null; then
            umount "$root/$m" 2>/dev/null || umount -l "$root/$m" || true
        fi
    done
}

assert_nothing_mounted() {
    local root="$1" m
    for m in dev/pts dev sys proc; do
        if mountpoint -q "$root/$m" 2>/dev/null; then
            die "$root/$m is still mounted; refusing to touch $root"
        fi
    done
    # Belt and braces: any mount at all below the chroot.
    if awk -v r="$(realpath -m "$root")/" 'index($2 "/", r) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
        die "something is still mounted below $root; refusing to delete it"
    fi
}

safe_remove() {
    local root="$1"
    [ -e "$root" ] || return 0
    unmount_all "$root"
    assert_nothing_mounted "$root"
    rm -rf --one-file-system -- "$root"
}

mirror() {
    if [ -n "${AGI_XMPP_LAB_MIRROR:-}" ]; then echo "$AGI_XMPP_LAB_MIRROR"; return; fi
    local m=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        m=$(grep -m1 -oP '^URIs:\s*\K\S+' /etc/apt/sources.list.d/debian.sources || true)
    fi
    if [ -z "$m" ] && [ -r /etc/apt/sources.list ]; then
        m=$(grep -m1 -oP '^deb\s+(\[[^]]*\]\s+)?\K(https?|file)://\S+' /etc/apt/sources.list || true)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

# Whatever this script mounted, so that the EXIT trap can undo it.
MOUNTED_ROOT=""
on_exit() { if [ -n "$MOUNTED_ROOT" ]; then unmount_all "$MOUNTED_ROOT"; fi; }
trap on_exit EXIT

install_optional() {
    local root="$1" pkg="$2"
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends "$pkg" >&2
}

# Steps after debootstrap, idempotent; also applied once to a chroot built without them.
finish_chroot() {
    local root="$1" pkg d
    MOUNTED_ROOT="$root"
    mountpoint -q "$root/proc" || mount --bind /proc "$root/proc"
    for pkg in $OPTIONAL_PACKAGES; do
        if chroot "$root" dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
            continue
        fi
        if ! chroot "$root" apt-cache show "$pkg" >/dev/null 2>&1; then
            log "optional package $pkg is not in $SUITE; skipped"
            continue
        fi
        log "installing optional package $pkg"
        if ! install_optional "$root" "$pkg"; then
            log "retrying $pkg after apt-get update"
            { chroot "$root" apt-get update -q >&2 && install_optional "$root" "$pkg"; } \
                || log "WARNING: could not install $pkg (the lab falls back to core sounds for music on hold)"
        fi
    done
    chroot "$root" apt-get clean >/dev/null 2>&1 || true
    unmount_all "$root"
    MOUNTED_ROOT=""
    # Asterisk started with -U root keeps only CAP_NET_ADMIN: even root cannot then write to
    # directories owned by the package's asterisk user, so hand them to root.
    for d in etc/asterisk var/lib/asterisk var/spool/asterisk var/log/asterisk var/cache/asterisk; do
        if [ -d "$root/$d" ] && [ ! -L "$root/$d" ]; then chown -R root:root "$root/$d"; fi
    done
    date -u +%FT%TZ > "$root/$STAMP"
}

mkdir -p "$(dirname "$LAB_DIR")"
exec 9>"$LOCK_FILE"
if ! flock -n 9; then
    log "another build_lab.sh holds $LOCK_FILE; waiting for it"
    flock 9
fi

# A build started by something else (no lock) may still be running into $TMP_DIR: wait for it.
foreign_build_running() {
    local p
    for p in /proc/[0-9]*; do
        [ -r "$p/cmdline" ] || continue
        if tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -q -- "debootstrap.* $TMP_DIR\( \|$\)"; then
            return 0
        fi
    done
    return 1
}
waited=0
saw_foreign=0
while ! is_built "$LAB_DIR" && foreign_build_running; do
    saw_foreign=1
    [ $((waited % 30)) = 0 ] && log "a debootstrap into $TMP_DIR is already running; waiting for it"
    sleep 2; waited=$((waited + 2))
    [ "$waited" -lt 3600 ] || die "gave up waiting for the running debootstrap after 1 h"
done
# That other build may rename its .tmp a moment after its debootstrap exits.
for _ in $(seq $((saw_foreign * 30))); do
    if is_built "$LAB_DIR" || [ ! -e "$TMP_DIR" ]; then break; fi
    sleep 1
done

if is_built "$LAB_DIR"; then
    if [ ! -e "$LAB_DIR/$STAMP" ]; then
        if mountpoint -q "$LAB_DIR/proc" || mountpoint -q "$LAB_DIR/dev"; then
            log "$LAB_DIR is in use (proc/dev mounted); skipping the finishing steps this time"
        else
            log "finishing $LAB_DIR (built earlier without them)"
            finish_chroot "$LAB_DIR"
        fi
    fi
    log "lab chroot ready: $LAB_DIR"
    exit 0
fi
if [ -e "$LAB_DIR" ]; then
    # Exists but has no asterisk: not ours to trust, and never deleted automatically.
    die "$LAB_DIR exists but holds no /usr/sbin/asterisk; remove it (after checking nothing is mounted in it) and rerun"
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
fi
if [ ! -e /usr/share/keyrings/debian-archive-keyring.gpg ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debian-archive-keyring >&2
fi

if [ -e "$TMP_DIR" ]; then
    log "removing the leftover $TMP_DIR of an interrupted build"
    safe_remove "$TMP_DIR"
fi

MIRROR=$(mirror)
log "debootstrap $SUITE from $MIRROR into $TMP_DIR (a few minutes, about 500 MB)"
start=$(date +%s)
MOUNTED_ROOT="$TMP_DIR"    # debootstrap mounts proc/sys inside while it works
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$TMP_DIR" "$MIRROR" >&2
finish_chroot "$TMP_DIR"
is_built "$TMP_DIR" || die "debootstrap finished but $TMP_DIR has no /usr/sbin/asterisk"
unmount_all "$TMP_DIR"
assert_nothing_mounted "$TMP_DIR"
mv -T "$TMP_DIR" "$LAB_DIR"
log "lab chroot ready: $LAB_DIR (built in $(( $(date +%s) - start )) s)"
