#!/bin/sh
#   fetch-containerd.sh   (the Kubefile's build-time RUN)
# Downloads Debian's containerd and runc packages for the target architecture with
# apt-get download, unpacks them with dpkg -x, and puts containerd, its runc shim,
# ctr and runc (plus their copyright files) into $FLOTILLA_WORKSPACE, which becomes
# a layer every role gets. Debian's runc lands in /usr/sbin/runc; it needs
# libseccomp2 on the node (Debian's systemd depends on it, so every Debian node has it).
# Needs: apt-get and dpkg (a Debian or Ubuntu build machine) with current package
# lists (apt-get update).
set -eu
: "${FLOTILLA_WORKSPACE:?run by flotilla build (FLOTILLA_WORKSPACE is unset)}"
arch=${TARGETARCH:-$(dpkg --print-architecture)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
for p in containerd runc; do
	if ! apt-get download "$p:$arch" >download.log 2>&1; then
		cat download.log >&2
		echo "fetch-containerd.sh: apt-get download $p:$arch failed: run 'apt-get update' (and for a foreign architecture 'dpkg --add-architecture $arch' first)" >&2
		exit 1
	fi
done
for deb in ./*.deb; do
	dpkg -x "$deb" x
done
w=$FLOTILLA_WORKSPACE
mkdir -p "$w/usr/local/bin" "$w/usr/local/sbin" "$w/usr/share/doc/flotilla-containerd"
for b in usr/bin/containerd usr/bin/containerd-shim-runc-v2 usr/bin/ctr usr/sbin/runc; do
	[ -x "x/$b" ] || { echo "fetch-containerd.sh: /$b is not in the Debian packages" >&2; exit 1; }
	install -m 0755 "x/$b" "$w/usr/local/${b#usr/}"
done
cp x/usr/share/doc/containerd/copyright "$w/usr/share/doc/flotilla-containerd/copyright.containerd"
cp x/usr/share/doc/runc/copyright "$w/usr/share/doc/flotilla-containerd/copyright.runc"
ls ./*.deb | sed 's|^\./|fetch-containerd.sh: unpacked |'
