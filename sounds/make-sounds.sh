#!/usr/bin/env bash
# Builds agi-xmpp's prompts from their text: sounds/NAME.txt -> sounds/agi-xmpp/NAME.{wav,gsm,ulaw,alaw,sln16}
#
# espeak-ng speaks the text (22.05 kHz), sox trims the silence around it, adds a short lead-in
# and tail, normalises the peak to -3 dBFS and writes each format Asterisk plays natively:
#   .wav    8 kHz mono 16-bit PCM (format_wav)      .gsm    GSM 06.10 (format_gsm)
#   .ulaw   8 kHz G.711 mu-law, raw (format_pcm)    .alaw   8 kHz G.711 A-law, raw (format_pcm)
#   .sln16  16 kHz signed linear, raw (format_sln), for wideband (G.722) calls
# Asterisk picks whichever needs the least transcoding for the call.
#
# Reproducible: no dither (sox -D), no timestamps in any output; the same espeak-ng and sox
# versions give byte-identical files. Translate by changing the text and the voice, e.g.
#   mkdir -p /tmp/de && echo "Bitte warten Sie, ich suche die gewünschte Person." > /tmp/de/please-hold.txt
#   VOICE=de TEXT_DIR=/tmp/de OUT_DIR=/tmp/de/agi-xmpp sounds/make-sounds.sh
# then install OUT_DIR as .../sounds/de/agi-xmpp/ (see sounds/README.md).
#
# Environment: VOICE (espeak-ng voice, default en-us), SPEED (words per minute, default 160),
# TEXT_DIR (where the NAME.txt files are, default this directory), OUT_DIR (default
# TEXT_DIR/agi-xmpp). Needs espeak-ng and sox (Debian: apt-get install espeak-ng sox;
# `make sounds` installs them).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VOICE="${VOICE:-en-us}"
SPEED="${SPEED:-160}"
TEXT_DIR="${TEXT_DIR:-$here}"
OUT_DIR="${OUT_DIR:-$TEXT_DIR/agi-xmpp}"

for tool in espeak-ng sox; do
  command -v "$tool" >/dev/null || { echo "make-sounds.sh: $tool is not installed" >&2; exit 1; }
done

shopt -s nullglob
texts=("$TEXT_DIR"/*.txt)
[ ${#texts[@]} -gt 0 ] || { echo "make-sounds.sh: no .txt files in $TEXT_DIR" >&2; exit 1; }
mkdir -p "$OUT_DIR"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Trim leading/trailing silence (the reverse trick trims the end), 0.1 s lead-in, 0.2 s tail,
# peak at -3 dBFS: loud enough on a phone line without clipping after transcoding.
shape=(silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse norm -3 pad 0.1 0.2)

for text in "${texts[@]}"; do
  name="$(basename "$text" .txt)"
  case "$name" in *[!A-Za-z0-9_-]*) echo "skipping $text: name is not [A-Za-z0-9_-]" >&2; continue;; esac
  espeak-ng -v "$VOICE" -s "$SPEED" -f "$text" -w "$work/$name.raw.wav"
  out="$OUT_DIR/$name"
  sox -D "$work/$name.raw.wav" -r 8000 -c 1 -b 16 -e signed-integer "$out.wav" "${shape[@]}"
  sox -D "$out.wav" -t gsm "$out.gsm"
  sox -D "$out.wav" -t ul "$out.ulaw"
  sox -D "$out.wav" -t al "$out.alaw"
  sox -D "$work/$name.raw.wav" -r 16000 -c 1 -b 16 -e signed-integer -t raw "$out.sln16" "${shape[@]}"
  printf '%s: %s s\n' "$out" "$(sox --i -D "$out.wav")"
done
