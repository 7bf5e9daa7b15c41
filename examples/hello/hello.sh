#!/bin/sh
# flotilla-hello: write a greeting that names this node, from the per-node config
# flotilla rendered, into $FLOTILLA_ROOT/var/lib/flotilla-hello/hello.txt.
set -eu
root="${FLOTILLA_ROOT:-}"
root="${root%/}"
conf="$root/etc/flotilla-hello/hello.conf"
node="$(hostname)"
greeting="${GREETING:-hello}"
if [ -r "$conf" ]; then
	# shellcheck disable=SC1090
	. "$conf"
fi
out="$root/var/lib/flotilla-hello"
mkdir -p "$out"
printf '%s from %s\n' "$greeting" "$node" > "$out/hello.txt.tmp"
mv "$out/hello.txt.tmp" "$out/hello.txt"
echo "flotilla-hello: wrote $out/hello.txt for node $node"
