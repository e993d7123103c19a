#!/usr/bin/env bash
# Make sure the servers the integration tests start themselves are installed:
#   mosquitto (Debian package `mosquitto`) and influxd (Debian package `influxdb`, 1.6),
#   chromium (Debian package `chromium`) for the web pages' browser tests, and
#   victoria-metrics (Debian package `victoria-metrics`): speaks InfluxDB's v2 write API, the
#   server the InfluxDB 2/3 backend's write path is tested against.
#
# The tests never use a system-wide service: tests/servers.py runs its own copies on free
# loopback ports. So the packages are installed WITHOUT letting their postinst start system
# services (policy-rc.d returning 101 = "action forbidden", see
# /usr/share/doc/init-system-helpers/README.policy-rc.d), and any influxd the install started
# anyway is stopped again. A mosquitto that was already running is left alone.
set -euo pipefail

find_bin() {
    local name=$1
    command -v "$name" 2>/dev/null && return 0
    for dir in /usr/sbin /usr/bin; do
        if [[ -x "$dir/$name" ]]; then
            echo "$dir/$name"
            return 0
        fi
    done
    return 1
}

missing=()
find_bin mosquitto >/dev/null || missing+=(mosquitto)
find_bin influxd >/dev/null || missing+=(influxdb)
# The web pages' browser tests drive Debian's chromium (Playwright never downloads one).
find_bin chromium >/dev/null || missing+=(chromium)
find_bin victoria-metrics >/dev/null || missing+=(victoria-metrics)

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "ensure-servers: missing Debian package(s): ${missing[*]}" >&2
    echo "ensure-servers: install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi

# Was an influxd already running before we installed anything? Then it is not ours to stop.
influxd_before=$(pgrep -x influxd || true)
vm_before=$(pidof victoria-metrics || true)  # pgrep -x matches 15 characters at most

policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# Written by linewatch scripts/ensure-servers.sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() {
    if [[ $own_policy -eq 1 ]]; then
        rm -f "$policy"
    fi
}
trap cleanup EXIT

echo "ensure-servers: installing ${missing[*]} (apt-get)" >&2
apt-get update -qq
# Only the missing ones: reinstalling or upgrading a present mosquitto could disturb a broker
# that is already running on this machine.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2

# Belt and braces: without systemd the postinst may still have run an init script.
if [[ -z $influxd_before ]]; then
    for pid in $(pgrep -x influxd || true); do
        echo "ensure-servers: stopping the system influxd the package started (pid $pid)" >&2
        kill "$pid" || true
    done
fi

if [[ -z $vm_before ]]; then
    for pid in $(pidof victoria-metrics || true); do
        echo "ensure-servers: stopping the system victoria-metrics the package started (pid $pid)" >&2
        kill "$pid" || true
    done
fi

find_bin mosquitto >/dev/null || { echo "ensure-servers: mosquitto still missing" >&2; exit 1; }
find_bin influxd >/dev/null || { echo "ensure-servers: influxd still missing" >&2; exit 1; }
find_bin chromium >/dev/null || { echo "ensure-servers: chromium still missing" >&2; exit 1; }
find_bin victoria-metrics >/dev/null || { echo "ensure-servers: victoria-metrics still missing" >&2; exit 1; }
echo "ensure-servers: ok" >&2
