#!/bin/sh
#   fetch-debs.sh PACKAGE...
# The Kubefile's build-time RUN for the node runtime: containerd, runc, the CNI
# plugins, iptables, conntrack, socat and the libraries they need that a Debian 12
# minbase node lacks. apt-get download for $TARGETARCH, dpkg -x into a staging
# directory, then only the run-time files into $FLOTILLA_WORKSPACE with merged-/usr
# paths (a layer with /lib or /sbin entries could replace the node's
# /lib -> usr/lib symlink; shared/HOSTS.md). Maintainer scripts do not run, so the
# iptables names are linked to xtables-nft-multi here (what update-alternatives
# would do). Cached by flotilla like any RUN.
set -eu
: "${FLOTILLA_WORKSPACE:?run by flotilla build (FLOTILLA_WORKSPACE is unset)}"
arch=${TARGETARCH:-$(dpkg --print-architecture)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
[ $# -gt 0 ] || { echo "usage: fetch-debs.sh PACKAGE..." >&2; exit 2; }
for p in "$@"; do
	if ! apt-get download "$p:$arch" >download.log 2>&1; then
		cat download.log >&2
		echo "fetch-debs.sh: apt-get download $p:$arch failed: run 'apt-get update'" >&2
		exit 1
	fi
done
mkdir x
for deb in ./*.deb; do
	dpkg -x "$deb" x
done
# Only what runs: no docs but copyrights, no man pages, no /etc defaults of
# packages whose units we replace.
rm -rf x/usr/share/man x/usr/share/info x/usr/share/lintian x/usr/share/bash-completion x/usr/share/zsh x/etc/init.d x/etc/default x/etc/logrotate.d
find x/usr/share/doc -type f ! -name copyright -delete 2>/dev/null || true
# merged /usr
for d in bin sbin lib lib64; do
	if [ -d "x/$d" ] && [ ! -L "x/$d" ]; then
		mkdir -p "x/usr/$d"
		cp -a "x/$d/." "x/usr/$d/"
		rm -rf "x/$d"
	fi
done
# iptables alternatives (nft backend, like Debian's default)
if [ -e x/usr/sbin/xtables-nft-multi ]; then
	for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
		ln -sf xtables-nft-multi "x/usr/sbin/$n"
	done
fi
# Debian's containerd unit and config are replaced by the image's own.
rm -rf x/usr/lib/systemd x/lib/systemd x/etc/containerd
# Only the CNI plugins the image uses (the package has 16, 60 MB).
if [ -d x/usr/lib/cni ]; then
	find x/usr/lib/cni -type f ! -name bridge ! -name host-local ! -name loopback ! -name portmap -delete
fi
# Debian's containerd package also ships the v1 shims and legacy iptables; unused.
rm -f x/usr/bin/containerd-shim x/usr/bin/containerd-shim-runc-v1 x/usr/sbin/*-legacy*
cp -a x/. "$FLOTILLA_WORKSPACE/"
ls ./*.deb | sed 's|^\./|fetch-debs.sh: unpacked |'
