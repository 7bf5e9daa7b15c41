#!/bin/sh
# rootfs.sh: build the sandbox fleet's Debian root filesystem once and cache it.
#
#   e2e/rootfs.sh ensure   build it unless the cache is valid (no-op then)
#   e2e/rootfs.sh path     print the cached rootfs directory
#   e2e/rootfs.sh clean    remove the cache
#
# The cache lives in $FLOTILLA_E2E_CACHE (default /var/cache/flotilla-e2e). Nodes
# mount it read-only as the lower dir of their overlay, so it is kept unpacked.
# The Debian mirror is the one apt on this machine uses (never hard-coded).
set -eu

CACHE=${FLOTILLA_E2E_CACHE:-/var/cache/flotilla-e2e}
ROOTFS=$CACHE/rootfs
# Bump REVISION when the preparation below changes so old caches are rebuilt.
REVISION=1
PACKAGES=systemd,systemd-sysv,dbus,iproute2,procps,ca-certificates,curl,iputils-ping
SUITE=${FLOTILLA_E2E_SUITE:-}

die() { echo "rootfs.sh: $*" >&2; exit 1; }

suite() {
	if [ -n "$SUITE" ]; then echo "$SUITE"; return; fi
	# shellcheck disable=SC1091
	. /etc/os-release
	[ -n "${VERSION_CODENAME:-}" ] || die "cannot tell the Debian release from /etc/os-release; set FLOTILLA_E2E_SUITE"
	echo "$VERSION_CODENAME"
}

# mirror prints the first apt source URI that serves the suite itself (not -security).
mirror() {
	s=$1
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		m=$(awk -v s="$s" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1) == s) { print $i; exit } }' "$f")
		[ -n "$m" ] && { echo "$m"; return; }
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		m=$(awk -v s="$s" '
			function flush() { if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " s " ") && uris != "") { split(uris, u, " "); print u[1]; found = 1; exit } types = ""; suites = ""; uris = "" }
			/^[ \t]*$/ { flush(); next }
			/^Types:/  { sub(/^Types:[ \t]*/, "");  types = $0 }
			/^URIs:/   { sub(/^URIs:[ \t]*/, "");   uris = $0 }
			/^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
			END { if (!found) flush() }' "$f")
		[ -n "$m" ] && { echo "$m"; return; }
	done
	die "no apt source for suite $s in /etc/apt/sources.list or /etc/apt/sources.list.d/"
}

stamp() { echo "revision=$REVISION suite=$(suite) packages=$PACKAGES arch=$(dpkg --print-architecture)"; }

valid() {
	[ -f "$ROOTFS/.flotilla-e2e-stamp" ] && [ "$(cat "$ROOTFS/.flotilla-e2e-stamp")" = "$(stamp)" ] &&
		[ -x "$ROOTFS/lib/systemd/systemd" ]
}

# prepare turns a fresh debootstrap tree into a node template: no identity of its
# own (each node writes hostname and machine-id into its overlay), no apt caches,
# and no units that cannot work inside a container.
prepare() {
	r=$1
	: >"$r/etc/machine-id"
	rm -f "$r/var/lib/dbus/machine-id" "$r/etc/hostname"
	chroot "$r" apt-get clean >/dev/null 2>&1 || true
	rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/log/*.log
	for u in systemd-networkd.service systemd-networkd.socket systemd-resolved.service \
		systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
		fstrim.timer getty@tty1.service; do
		ln -sf /dev/null "$r/etc/systemd/system/$u"
	done
	# Nodes keep their journal in memory: fast, and gone with the node.
	mkdir -p "$r/etc/systemd/journald.conf.d"
	printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n' >"$r/etc/systemd/journald.conf.d/flotilla-e2e.conf"
}

ensure() {
	[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot)"
	if valid; then return 0; fi
	command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install -y debootstrap"
	s=$(suite)
	m=$(mirror "$s")
	mkdir -p "$CACHE"
	tmp=$CACHE/rootfs.tmp.$$
	trap 'rm -rf "$tmp"' EXIT INT TERM
	echo "rootfs.sh: building $s rootfs into $ROOTFS (once; about a minute)" >&2
	start=$(date +%s)
	if ! debootstrap --variant=minbase --include="$PACKAGES" "$s" "$tmp" "$m" >"$CACHE/debootstrap.log" 2>&1; then
		tail -n 20 "$CACHE/debootstrap.log" >&2
		die "debootstrap failed; full log in $CACHE/debootstrap.log"
	fi
	prepare "$tmp"
	stamp >"$tmp/.flotilla-e2e-stamp"
	rm -rf "$ROOTFS"
	mv "$tmp" "$ROOTFS"
	trap - EXIT INT TERM
	echo "rootfs.sh: rootfs ready in $(($(date +%s) - start)) s: $ROOTFS ($(du -sh "$ROOTFS" | cut -f1))" >&2
}

case "${1:-}" in
ensure) ensure ;;
path)
	valid || die "no valid rootfs in $ROOTFS: run e2e/rootfs.sh ensure"
	echo "$ROOTFS"
	;;
clean) rm -rf "$ROOTFS" "$CACHE"/rootfs.tmp.* ;;
*)
	echo "usage: $0 ensure|path|clean" >&2
	exit 2
	;;
esac
