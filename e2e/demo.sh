#!/bin/bash
# demo.sh: flotilla's main job on one machine (make demo). Brings up the sandbox
# network (e2e/fleet: a bridge, no nodes), starts a controller on it with the sandbox
# infrastructure provider, builds examples/etcd and applies examples/etcd/Clusterfile,
# which asks for machines by count (3 etcd masters, 3 workers behind lvscare's VIP) and
# lists no host: apply makes the 6 systemd-nspawn machines, each joins with the
# bootstrap one-liner as its first-boot user data, then the image rolls out with live
# progress. Then it proves the cluster works.
#
#   ./e2e/demo.sh          run the demo (root; Debian 12 with Go); leaves it running
#   ./e2e/demo.sh down     tear everything down (make demo-down)
#
# Everything lives under $FLOTILLA_DEMO_DIR (default /var/lib/flotilla-demo): the
# controller's data dir, its image store, its PID file and the logs. A failed or
# interrupted run cleans up after itself; running it again starts from scratch.
# FLOTILLA_DEMO_FLEET, FLOTILLA_DEMO_SUBNET and FLOTILLA_DEMO_VIP move the demo to
# another fleet name, subnet and VIP (the Clusterfile's vip is rewritten to match).
set -Eeuo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
DIR=${FLOTILLA_DEMO_DIR:-/var/lib/flotilla-demo}
LOGS=$DIR/logs
FLEET_NAME=${FLOTILLA_DEMO_FLEET:-flotilla}
SUBNET=${FLOTILLA_DEMO_SUBNET:-10.77.0.0/24}
VIP=${FLOTILLA_DEMO_VIP:-10.77.0.100}
IMAGE=flotilla-examples/etcd:3.4
CLUSTERFILE=$DIR/Clusterfile # examples/etcd/Clusterfile with the VIP above
# The machines examples/etcd/Clusterfile asks for (spec.infra: 3 masters, 3 nodes).
M1=demo-etcd-master-1 M2=demo-etcd-master-2 M3=demo-etcd-master-3
N1=demo-etcd-node-1 N2=demo-etcd-node-2
MACHINES=6
BIN=$REPO/bin/flotilla
FLEET=$DIR/bin/fleet
export FLOTILLA_STORE=$DIR/images
# The CLI finds the controller through its data dir; ignore a user's own settings.
export FLOTILLA_CONTROLLER= FLOTILLA_CREDENTIALS=
CTL=(--data-dir "$DIR/controller")

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
	echo "demo: $*" >&2
	exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# down removes everything a demo run created; safe to run at any time.
down() {
	if [ -f "$DIR/controller.pid" ]; then
		pid=$(cat "$DIR/controller.pid")
		# Only our controller: the PID must still run our binary with our data dir.
		if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--data-dir $DIR/controller"; then
			kill "$pid" 2>/dev/null || true
			for _ in $(seq 50); do
				[ -d "/proc/$pid" ] || break
				sleep 0.1
			done
			kill -9 "$pid" 2>/dev/null || true
		fi
		rm -f "$DIR/controller.pid"
	fi
	if [ -x "$FLEET" ]; then
		"$FLEET" -name "$FLEET_NAME" down || true
	elif command -v go >/dev/null; then
		go run ./e2e/cmd/fleet -name "$FLEET_NAME" down || true
	fi
	rm -f /run/systemd/nspawn/"$FLEET_NAME"-*.nspawn
	rm -rf "$DIR/controller" "$DIR/images" "$DIR/controller.log" "$DIR/Clusterfile"
}

if [ "${1:-}" = down ]; then
	[ "$(id -u)" = 0 ] || die "must run as root (it removes network namespaces and containers)"
	down
	rm -rf "$DIR"
	echo "demo: everything removed"
	exit 0
fi
[ $# -eq 0 ] || die "usage: $0 [down]"
case "$VIP" in *[!0-9.]* | '') die "FLOTILLA_DEMO_VIP=$VIP is not an IPv4 address" ;; esac
[ "$(id -u)" = 0 ] || die "must run as root: the nodes are systemd-nspawn containers in network namespaces"
command -v go >/dev/null || die "Go is not on PATH (needed to build flotilla)"

cleanup_on_failure() {
	rc=$?
	trap - ERR INT TERM EXIT
	if [ "$rc" -ne 0 ]; then
		echo >&2
		echo "demo: failed or interrupted (exit $rc); cleaning up. Logs: $LOGS" >&2
		[ -f "$DIR/controller.log" ] && cp "$DIR/controller.log" "$LOGS/" 2>/dev/null
		down >/dev/null 2>&1 || true
	fi
	exit "$rc"
}
trap cleanup_on_failure EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

T0=$(now)
say "Preparing (leftovers of an earlier run are removed first)"
down >/dev/null 2>&1 || true
mkdir -p "$LOGS" "$DIR/bin"
rm -f "$LOGS"/*

missing=()
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
	note "installing ${missing[*]} with apt-get"
	apt-get install -y "${missing[@]}" >"$LOGS/apt.log" 2>&1 ||
		{ apt-get update >>"$LOGS/apt.log" 2>&1 && apt-get install -y "${missing[@]}" >>"$LOGS/apt.log" 2>&1; } ||
		die "apt-get install ${missing[*]} failed; see $LOGS/apt.log"
fi
if ! apt-cache show etcd-server >/dev/null 2>&1; then
	note "apt has no etcd-server in its lists: apt-get update"
	apt-get update >>"$LOGS/apt.log" 2>&1 || die "apt-get update failed; see $LOGS/apt.log"
fi

if [ -z "${MAKELEVEL:-}" ] || [ ! -x "$BIN" ]; then
	note "building bin/flotilla"
	make -s build >"$LOGS/build.log" 2>&1 || die "building flotilla failed; see $LOGS/build.log"
fi
CGO_ENABLED=0 go build -o "$FLEET" ./e2e/cmd/fleet >>"$LOGS/build.log" 2>&1 || die "building the fleet tool failed; see $LOGS/build.log"
note "$("$BIN" version 2>/dev/null | head -1)"

say "Root filesystem of the nodes (debootstrap once, then cached)"
./e2e/rootfs.sh ensure 2>&1 | tee "$LOGS/rootfs.log" | sed 's/^/    /'

say "The sandbox network: bridge ${FLEET_NAME}0 on $SUBNET, no machines yet (the controller makes them)"
"$FLEET" -name "$FLEET_NAME" -subnet "$SUBNET" -n 0 up >"$LOGS/fleet.log" 2>&1 || {
	tail -20 "$LOGS/fleet.log" >&2
	die "bringing up the sandbox network failed; see $LOGS/fleet.log"
}
HOST=$("$FLEET" -name "$FLEET_NAME" host-ip)
note "the controller listens on $HOST; machines get the next addresses"

say "Starting the controller on $HOST with the sandbox provider (data dir $DIR/controller, image store $FLOTILLA_STORE)"
mkdir -p "$DIR/controller"
setsid "$BIN" controller --data-dir "$DIR/controller" \
	--listen "$HOST:4222" --http-listen "$HOST:9443" --advertise "$HOST" \
	--infra-sandbox "$FLEET_NAME" \
	>"$DIR/controller.log" 2>&1 </dev/null &
echo $! >"$DIR/controller.pid"
for i in $(seq 150); do
	grep -q 'flotilla controller ready' "$DIR/controller.log" 2>/dev/null && "$BIN" nodes "${CTL[@]}" >/dev/null 2>&1 && break
	[ -d "/proc/$(cat "$DIR/controller.pid")" ] || { tail -20 "$DIR/controller.log" >&2; die "the controller exited"; }
	[ "$i" -lt 150 ] || die "the controller does not answer after 30s; see $DIR/controller.log"
	sleep 0.2
done
note "controller PID $(cat "$DIR/controller.pid"), log $DIR/controller.log"

say "Building the cluster image $IMAGE from examples/etcd"
t=$(now)
"$BIN" build -t "$IMAGE" examples/etcd 2>&1 | tee "$LOGS/build-image.log" | grep -v '^time=' | sed 's/^/    /'
note "built in $(since "$t")s"

sed -e "s/^  vip: .*/  vip: $VIP/" "$REPO/examples/etcd/Clusterfile" >"$CLUSTERFILE"
say "flotilla apply -f examples/etcd/Clusterfile (spec.infra: 3 masters, 3 nodes; no host list)"
t=$(now)
set +e
"$BIN" apply "${CTL[@]}" -f "$CLUSTERFILE" 2>&1 | tee "$LOGS/apply.log"
rc=${PIPESTATUS[0]}
set -e
APPLY_S=$(since "$t")
[ "$rc" -ne 130 ] || exit 130 # Ctrl-C during the apply: clean up as interrupted
[ "$rc" -eq 0 ] || die "flotilla apply failed (exit $rc); see $LOGS/apply.log and $DIR/controller.log"
# The driver's own figure: from the start of the apply to the last machine's agent online.
JOINED_S=$(sed -n 's/.*infra: [0-9]* machine(s) of [^ ]* created and joined in \([0-9.]*\)s.*/\1/p' "$LOGS/apply.log" | tail -1)
[ -n "$JOINED_S" ] || JOINED_S="?"
"$BIN" nodes "${CTL[@]}" | sed 's/^/    /'
note "$MACHINES machines created and joined in ${JOINED_S}s; whole apply (machines, then etcd) ${APPLY_S}s"

say "Proving it: write on one member, read on another, read through the VIP from a worker"
ex() { "$FLEET" -name "$FLEET_NAME" exec "$@"; }
VALUE="written on $M1 at $(date -u +%H:%M:%S)"
ex "$M1" /usr/local/bin/etcdctl --endpoints http://127.0.0.1:2379 put flotilla-demo "$VALUE" | sed "s/^/    $M1\$ etcdctl put flotilla-demo: /"
GOT=$(ex "$M3" /usr/local/bin/etcdctl --endpoints http://127.0.0.1:2379 get --print-value-only flotilla-demo | tr -d '\r')
note "$M3\$ etcdctl get flotilla-demo: $GOT"
[ "$GOT" = "$VALUE" ] || die "$M3 read '$GOT', want '$VALUE'"
ex "$M2" /usr/local/bin/etcdctl --endpoints http://127.0.0.1:2379 member list -w table | sed 's/^/    /'
VIA_VIP=""
for i in $(seq 30); do
	VIA_VIP=$(ex "$N1" /usr/local/bin/etcdctl --dial-timeout 2s --endpoints "http://$VIP:2379" get --print-value-only flotilla-demo 2>/dev/null | tr -d '\r') && [ -n "$VIA_VIP" ] && break
	sleep 1
done
note "$N1\$ etcdctl --endpoints http://$VIP:2379 get flotilla-demo: $VIA_VIP"
[ "$VIA_VIP" = "$VALUE" ] || die "$N1 read '$VIA_VIP' through the VIP, want '$VALUE'; see 'journalctl -u flotilla-lvscare' on $N1"
ex "$N2" /usr/local/bin/etcdctl --endpoints "http://$VIP:2379" endpoint health 2>&1 | sed "s/^/    $N2\$ etcdctl --endpoints VIP endpoint health: /"

say "Failover: stop etcd on $M1; lvscare on the workers drops it from the VIP"
M1IP=$(ex "$M1" ip -4 -o addr show scope global | awk '{ sub(/\/.*/, "", $4); print $4; exit }')
ex "$M1" systemctl stop flotilla-etcd.service
t=$(now)
for i in $(seq 60); do
	ex "$N2" journalctl -u flotilla-lvscare.service --no-pager -o cat --since "-30s" 2>/dev/null | grep 'backend down' | grep -q "backend=$M1IP:2379" && break
	[ "$i" -lt 60 ] || die "lvscare on $N2 did not drop $M1 ($M1IP) within 15s; see 'journalctl -u flotilla-lvscare' on $N2"
	sleep 0.25
done
FAILOVER_S=$(since "$t")
note "$N2 lvscare: backend $M1IP:2379 down, removed from the VIP ${FAILOVER_S}s after the stop"
ok=0
for i in $(seq 10); do
	got=$(ex "$N2" /usr/local/bin/etcdctl --dial-timeout 2s --endpoints "http://$VIP:2379" get --print-value-only flotilla-demo 2>/dev/null | tr -d '\r') || true
	[ "$got" = "$VALUE" ] && ok=$((ok + 1))
done
note "$N2\$ etcdctl --endpoints http://$VIP:2379 get flotilla-demo, 10 times: $ok answered"
[ "$ok" -eq 10 ] || die "only $ok of 10 reads through the VIP answered with $M1's etcd stopped"
ex "$M1" systemctl start flotilla-etcd.service
note "$M1: etcd started again (lvscare adds it back after 2 good health checks)"

say "Applying again: nothing left to do"
t=$(now)
"$BIN" apply "${CTL[@]}" -f "$CLUSTERFILE" >"$LOGS/apply-again.log" 2>&1 || die "second apply failed; see $LOGS/apply-again.log"
REAPPLY_S=$(since "$t")
tail -12 "$LOGS/apply-again.log" | sed 's/^/    /'

cp "$DIR/controller.log" "$LOGS/controller.log"
trap - EXIT
cat <<EOF

$(printf '\033[1m')flotilla demo: done in $(since "$T0")s$(printf '\033[0m')
  $MACHINES machines from a count  ${JOINED_S}s   (flotilla apply to every agent joined; Sealer's anchor: 30 s for 6 cloud nodes)
  apply of etcd          ${APPLY_S}s   (machines, then 3 masters and 3 workers with lvscare on VIP $VIP)
  apply again            ${REAPPLY_S}s   (nothing to do)
  etcd: written on $M1, read back on $M3 and through the VIP on $N1
  failover               ${FAILOVER_S}s   ($M1's etcd stopped until lvscare dropped it; then 10 of 10 reads via the VIP)

The cluster keeps running. Try:
  $BIN status ${CTL[*]}
  $FLEET -name $FLEET_NAME exec $M2 etcdctl member list
  $FLEET -name $FLEET_NAME exec $N1 etcdctl --endpoints http://$VIP:2379 get flotilla-demo
  edit the counts in $CLUSTERFILE and apply it again: $BIN apply ${CTL[*]} -f $CLUSTERFILE
Logs: $LOGS   Tear down: make demo-down
EOF
