#!/bin/sh
# build-binaries.sh: builds the Kubernetes server and client binaries from the
# k8s.io/kubernetes Go module pinned in go.mod (the wrapper module in this
# directory) into $CACHE/bin, once per version: a second run finds the stamp
# and returns at once. Only the Go module proxy is needed.
#
#   CACHE    output directory (default /var/cache/flotilla-k8s/$VERSION)
#   VERSION  read from go.mod's k8s.io/kubernetes requirement
set -eu
here=$(cd "$(dirname "$0")" && pwd)
VERSION=$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
[ -n "$VERSION" ] || { echo "build-binaries.sh: no k8s.io/kubernetes requirement in $here/go.mod" >&2; exit 1; }
CACHE=${CACHE:-/var/cache/flotilla-k8s/$VERSION}
CMDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy"

major=$(echo "$VERSION" | sed -E 's/^v([0-9]+)\..*/\1/')
minor=$(echo "$VERSION" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')
ld="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ld="$ld -X $pkg.gitVersion=$VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
	ld="$ld -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

# The stamp names everything that changes the output: the module pins, the
# commands, the linker flags and the Go toolchain.
stamp=$( (cat "$here/go.mod" "$here/go.sum"; echo "$CMDS $ld"; go version) | sha256sum | cut -c1-16)
if [ -f "$CACHE/bin/.stamp" ] && [ "$(cat "$CACHE/bin/.stamp")" = "$stamp" ]; then
	echo "kubernetes $VERSION binaries cached in $CACHE/bin"
	exit 0
fi

mkdir -p "$CACHE"
# One build per cache at a time: a second caller waits, then finds the stamp.
if [ -z "${FLOTILLA_K8S_LOCKED:-}" ]; then
	exec env FLOTILLA_K8S_LOCKED=1 flock "$CACHE/.build.lock" "$0" "$@"
fi
if [ -f "$CACHE/bin/.stamp" ] && [ "$(cat "$CACHE/bin/.stamp")" = "$stamp" ]; then
	echo "kubernetes $VERSION binaries cached in $CACHE/bin (built meanwhile)"
	exit 0
fi
rm -rf "$CACHE/bin.tmp"
mkdir "$CACHE/bin.tmp"
pkgs=""
for c in $CMDS; do pkgs="$pkgs k8s.io/kubernetes/cmd/$c"; done
echo "building kubernetes $VERSION ($CMDS) into $CACHE/bin; about 15 minutes on 2 cores"
# One go build for all commands: shared packages compile once.
# shellcheck disable=SC2086
(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$CACHE/bin.tmp/" $pkgs)
for c in $CMDS; do
	case $c in
	kubectl) v=$("$CACHE/bin.tmp/$c" version --client) ;;
	*) v=$("$CACHE/bin.tmp/$c" --version) ;;
	esac
	case $v in *"$VERSION"*) ;; *) echo "build-binaries.sh: $c reports \"$v\", not $VERSION" >&2; exit 1 ;; esac
done
echo "$stamp" > "$CACHE/bin.tmp/.stamp"
rm -rf "$CACHE/bin"
mv "$CACHE/bin.tmp" "$CACHE/bin"
echo "kubernetes $VERSION binaries built into $CACHE/bin"
