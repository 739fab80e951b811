#!/bin/sh
# Picks the process to run from the first argument; `exec` keeps it PID 1 so SIGTERM
# reaches it (it then drains: NOT_SERVING, wait, stop with a grace period).
set -eu
what="${1:-gateway}"
[ "$#" -gt 0 ] && shift
case "$what" in
  gateway) exec python -m gateway "$@" ;;
  feedback | telemetry | anomaly | remediation) exec python -m "services.$what" "$@" ;;
  aiops) exec python -m services.cli "$@" ;;
  *) echo "usage: gateway|feedback|telemetry|anomaly|remediation|aiops [args]" >&2; exit 64 ;;
esac
