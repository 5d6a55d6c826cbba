#!/usr/bin/env bash
# Installs the Debian packages that tests, training and benchmarks use (not the runtime:
# `make run` needs only Python). As root it runs apt-get; otherwise it names what is missing.
set -euo pipefail
pkgs=(ffmpeg libopus0 espeak-ng flite sox libportaudio2 alsa-utils
      festival festvox-kallpc16k festvox-kdlpc16k festvox-italp16k festvox-itapc16k
      festvox-ca-ona-hts festvox-czech-dita festvox-czech-machac festvox-czech-ph
      festvox-czech-krb festvox-suopuhe-lj festvox-suopuhe-mv
      asterisk-core-sounds-en-g722 asterisk-core-sounds-es-g722 asterisk-core-sounds-it-g722
      asterisk-prompt-es-co asterisk-prompt-fr-armelle asterisk-prompt-it-menardi-wav
      tuxpaint-stamps-default ktuberling-data klettres-data asterisk-moh-opsound-wav
      chromium redis-server
      tcpdump sip-tester)  # the capture tests record the loopback while sipp makes a SIP call
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "missing system packages (install them as root): ${missing[*]}" >&2
  echo "  sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
