#!/bin/sh
# Renders packetpath.rules.yml.in with the values of a thresholds file (default
# thresholds.env beside this script) to standard output:
#
#   alerts/render.sh > alerts/packetpath.rules.yml
#   alerts/render.sh my-thresholds.env > /etc/prometheus/rules/packetpath.yml
set -eu
here=$(cd "$(dirname "$0")" && pwd)
env_file=${1:-$here/thresholds.env}
script=""
while IFS= read -r line; do
    case $line in '' | '#'*) continue ;; esac
    key=${line%%=*}
    value=${line#*=}
    script="$script
s|\${$key}|$value|g"
done <"$env_file"
sed -e "$script" "$here/packetpath.rules.yml.in"
