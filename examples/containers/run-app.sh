#!/bin/sh
#   run-app.sh   (the Kubefile's run-time step, on every node)
# Pulls $APP_IMAGE by its original name, as the Kubefile's IMAGE carried it, through
# containerd's registry hosts (the node-local mirror: the upstream registry need not be
# reachable) and runs it once with ctr, printing what the container prints.
set -eu
: "${APP_IMAGE:?APP_IMAGE is unset (an ENV of the Kubefile)}"
ctr() { /usr/local/bin/ctr --namespace k8s.io "$@"; }
i=0
until ctr version >/dev/null 2>&1; do
	i=$((i + 1))
	[ "$i" -lt 100 ] || { echo "run-app.sh: containerd does not answer on /run/containerd/containerd.sock" >&2; exit 1; }
	sleep 0.1
done
ctr images pull --hosts-dir /etc/containerd/certs.d "$APP_IMAGE" >/dev/null
ctr images ls "name==$APP_IMAGE"
name=flotilla-app-$$
ctr run --rm "$APP_IMAGE" "$name"
