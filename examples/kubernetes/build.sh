#!/bin/sh
#   ./build.sh            (make demo-k8s and the e2e test run it; so can you)
# Builds, or finds cached, everything the Kubefile copies, and puts it into _out/:
#   _out/master/  kube-apiserver kube-controller-manager kube-scheduler
#   _out/node/    kubelet kube-proxy kubectl flotilla-k8s-pki
#   _out/images/  OCI archives (OCI layout tars): registry.k8s.io/pause:3.10,
#                 flotilla.local/k8s-dns:v1, flotilla.local/busybox:1.35 (for tests
#                 and demos); the Kubefile carries them (IMAGE --from) and every
#                 node's registry mirror serves them to containerd
# Everything is cached under $CACHE (/var/cache/flotilla-k8s/<version>): the
# Kubernetes binaries by build/build-binaries.sh (about 15 minutes on 2 cores the
# first time), the rest here by a stamp of its inputs. Needs Go, gcc (static
# libc: libc6-dev), apt-get (Debian's busybox-static).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
VERSION=$(cd "$here/build" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
CACHE=${CACHE:-/var/cache/flotilla-k8s/$VERSION}
export CACHE
out=$here/_out

# The tools module (DNS, PKI, image packer), stamped by its sources.
tstamp=$( (cd "$here/tools" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) | sort | xargs cat; go version) | sha256sum | cut -c1-16)
if [ "$(cat "$CACHE/tools/.stamp" 2>/dev/null)" != "$tstamp" ]; then
	echo "building the tools module (dns, pki, ociimage)"
	rm -rf "$CACHE/tools.tmp"
	mkdir -p "$CACHE/tools.tmp"
	(cd "$here/tools" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$CACHE/tools.tmp/" ./dns ./pki ./ociimage)
	echo "$tstamp" >"$CACHE/tools.tmp/.stamp"
	rm -rf "$CACHE/tools"
	mv "$CACHE/tools.tmp" "$CACHE/tools"
fi

# pause: static, from the kubernetes module's build/pause/linux/pause.c.
# `go list -m` names no directory for a module not yet in the module cache (a fresh
# machine): download it first.
moddir=$(cd "$here/build" && go mod download k8s.io/kubernetes && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
if [ -z "$moddir" ] || [ ! -f "$moddir/build/pause/linux/pause.c" ]; then
	echo "build.sh: k8s.io/kubernetes $VERSION: no build/pause/linux/pause.c in the module cache (dir: '${moddir}')" >&2
	exit 1
fi
if [ ! -x "$CACHE/pause/pause" ]; then
	echo "building pause from $moddir/build/pause/linux/pause.c"
	mkdir -p "$CACHE/pause"
	gcc -Os -Wall -Werror -static -DVERSION="$VERSION" -o "$CACHE/pause/pause.tmp" "$moddir/build/pause/linux/pause.c"
	strip "$CACHE/pause/pause.tmp"
	mv "$CACHE/pause/pause.tmp" "$CACHE/pause/pause"
fi

# busybox: Debian's static build, for the test workloads.
if [ ! -x "$CACHE/busybox/busybox" ]; then
	echo "fetching Debian's busybox-static"
	tmp=$(mktemp -d)
	(cd "$tmp" && apt-get download "busybox-static:$(dpkg --print-architecture)" >apt.log 2>&1 && dpkg -x ./*.deb x) || { cat "$tmp/apt.log" >&2; exit 1; }
	mkdir -p "$CACHE/busybox"
	cp "$tmp/x/bin/busybox" "$CACHE/busybox/busybox"
	rm -rf "$tmp"
fi

# Images: reproducible OCI archives (same inputs, same digests).
mkdir -p "$CACHE/images"
pack() { # file ref args...
	f=$1
	shift
	"$CACHE/tools/ociimage" -o "$CACHE/images/$f" "$@" >/dev/null
}
pack pause.tar -ref registry.k8s.io/pause:3.10 -user 65535:65535 -entrypoint /pause -file "$CACHE/pause/pause=/pause:0755"
pack k8s-dns.tar -ref flotilla.local/k8s-dns:v1 -user 65534:65534 -entrypoint /flotilla-k8s-dns -file "$CACHE/tools/dns=/flotilla-k8s-dns:0755"
pack busybox.tar -ref flotilla.local/busybox:1.35 -entrypoint /bin/sh -file "$CACHE/busybox/busybox=/bin/busybox:0755" \
	-symlink /bin/sh=busybox -symlink /bin/httpd=busybox -symlink /bin/wget=busybox -symlink /bin/nslookup=busybox \
	-symlink /bin/hostname=busybox -symlink /bin/sleep=busybox -symlink /bin/echo=busybox -symlink /bin/cat=busybox \
	-symlink /bin/mkdir=busybox -symlink /bin/ls=busybox -symlink /bin/timeout=busybox -symlink /bin/nc=busybox

# The Kubernetes binaries (one build per version; waits for a build already running).
"$here/build/build-binaries.sh"

# _out: hard links where the cache and the context share a file system, else copies.
rm -rf "$out"
mkdir -p "$out/master" "$out/node" "$out/images"
put() { ln -f "$1" "$2" 2>/dev/null || cp "$1" "$2"; }
for b in kube-apiserver kube-controller-manager kube-scheduler; do put "$CACHE/bin/$b" "$out/master/$b"; done
for b in kubelet kube-proxy kubectl; do put "$CACHE/bin/$b" "$out/node/$b"; done
put "$CACHE/tools/pki" "$out/node/flotilla-k8s-pki"
for i in pause k8s-dns busybox; do put "$CACHE/images/$i.tar" "$out/images/$i.tar"; done
echo "kubernetes $VERSION: _out ready ($(du -sh "$out" | cut -f1))"
