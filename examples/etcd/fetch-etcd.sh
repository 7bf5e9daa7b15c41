#!/bin/sh
#   fetch-etcd.sh PACKAGE...   (the Kubefile: etcd-server etcd-client)
# The Kubefile's build-time RUN. Downloads Debian's etcd-server and etcd-client
# packages for the target architecture with apt-get download, unpacks them
# with dpkg -x, and puts etcd and etcdctl (plus their copyright files) into
# $FLOTILLA_WORKSPACE, which becomes a layer every role gets.
# Needs: apt-get and dpkg (a Debian or Ubuntu build machine) with current package
# lists (apt-get update) that carry etcd-server for $TARGETARCH.
set -eu
: "${FLOTILLA_WORKSPACE:?run by flotilla build (FLOTILLA_WORKSPACE is unset)}"
arch=${TARGETARCH:-$(dpkg --print-architecture)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
[ $# -gt 0 ] || set -- etcd-server etcd-client
for p in "$@"; do
	if ! apt-get download "$p:$arch" >download.log 2>&1; then
		cat download.log >&2
		echo "fetch-etcd.sh: apt-get download $p:$arch failed: run 'apt-get update' (and for a foreign architecture 'dpkg --add-architecture $arch' first)" >&2
		exit 1
	fi
done
for deb in ./*.deb; do
	dpkg -x "$deb" x
done
mkdir -p "$FLOTILLA_WORKSPACE/usr/local/bin" "$FLOTILLA_WORKSPACE/usr/share/doc/flotilla-etcd"
for b in etcd etcdctl; do
	[ -x "x/usr/bin/$b" ] || { echo "fetch-etcd.sh: $b is not in the Debian packages (looked for /usr/bin/$b)" >&2; exit 1; }
	install -m 0755 "x/usr/bin/$b" "$FLOTILLA_WORKSPACE/usr/local/bin/$b"
done
cp x/usr/share/doc/etcd-server/copyright "$FLOTILLA_WORKSPACE/usr/share/doc/flotilla-etcd/copyright"
ls ./*.deb | sed 's|^\./|fetch-etcd.sh: unpacked |'
