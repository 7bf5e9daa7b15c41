#!/usr/bin/env bash
# Runs every fuzz target in the tree, one after another, each for a number of
# executions rather than a wall-clock time.
#
# Why a count: with a duration (-fuzztime=15s) Go 1.26's fuzz coordinator can fail
# a target with a bare "context deadline exceeded" when the deadline fires while a
# worker is still mid-call (go.dev/issue/75804, fixed in Go 1.27). On a loaded
# 2-core machine that failed CI once in a few runs with no crasher written. A count
# has no deadline to race; a slow machine only takes longer.
#
# FUZZTIME overrides the budget for every target (a count such as 50000x, or a
# duration when you want one and accept the race above).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}

# budget TARGET: executions per target, sized to a few seconds each on 2 cores (about 2 minutes in all)
# (measured 2026-12-08: FuzzUnpack ~250/s, FuzzUnpackEntries and
# FuzzParseConfig ~2,500/s, the decoders 8,000-50,000/s).
budget() {
	if [ -n "${FUZZTIME:-}" ]; then echo "$FUZZTIME"; return; fi
	case "$1" in
	FuzzUnpack) echo 10000x ;;
	FuzzUnpackEntries | FuzzParseConfig) echo 50000x ;;
	*) echo 150000x ;;
	esac
}

dirs=$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -r -n1 dirname | sort -u)
for d in $dirs; do
	for f in $(grep -h '^func Fuzz' "$d"/*_test.go | sed 's/func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do
		b=$(budget "$f")
		echo "fuzz $d $f ($b)"
		"$GO" test -run='^$' -fuzz="^$f\$" -fuzztime="$b" "$d"
	done
done
