#!/usr/bin/env bash
# Installs what the tests need on Debian 12 (as root): the Debian packages the
# integration and e2e tests drive (a real docker-registry, nftables, systemd-nspawn,
# debootstrap, sshd for the scp baseline), fresh package lists for examples/etcd's
# build-time `apt-get download`, and the sandbox fleet's cached rootfs.
# Used by .ci/run and by `make test`; a second run changes nothing. Not root, or no
# apt: says what is missing and leaves it to the tests to say what they cannot do.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

pkgs=(docker-registry nftables systemd-container debootstrap iproute2 openssh-server iperf3 curl ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
	[ ${#missing[@]} -eq 0 ] || echo "deps: not root or no apt-get; missing Debian packages: ${missing[*]}" >&2
	exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing ${missing[*]}" >&2
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi
# examples/etcd's build-time RUN downloads Debian's etcd-server (the e2e apply tests build it).
apt-cache show etcd-server >/dev/null 2>&1 || apt-get update -qq

# The sandbox fleet boots from a cached Debian rootfs (built once, about 40 s).
./e2e/rootfs.sh ensure
