#!/bin/bash
# Sourced by launch/cpu_stages23.sh and benchmarks/results_shipped.sh before they run anything: NOOP,
# the share of no-op turns stages 2 and 3 draw (default 0.1, as shipped since 2026-12-06), must be in
# [0, 1); anything else stops the caller with exit code 2.
NOOP=${NOOP:-0.1}
python -c "import sys; p = float(sys.argv[1]); assert 0 <= p < 1" "$NOOP" 2>/dev/null \
  || { echo "NOOP: a share of no-op turns in [0, 1), not '$NOOP'" >&2; exit 2; }
