#!/bin/bash
# demo.sh: flotilla's main job on one machine (make demo). Brings up the sandbox
# network (sandbox/: a bridge, no nodes), starts a controller on it with the sandbox
# infrastructure provider, builds examples/etcd and applies examples/etcd/Clusterfile,
# which asks for machines by count (3 etcd masters, 3 workers behind lvscare's VIP) and
# lists no host: apply makes the 6 systemd-nspawn machines, each joins with the
# bootstrap one-liner as its first-boot user data, then the image rolls out with live
# progress. Then it proves the cluster works.
#
#   ./e2e/demo.sh             run the demo (root; Debian 12 with Go); leaves it running
#   ./e2e/demo.sh containers  the container images demo (make demo-containers): 3 nodes,
#                             examples/containers carrying a busybox image pushed to a
#                             throwaway local registry that is stopped before the apply;
#                             every node pulls it by its original name and runs it
#                             (its 3 nodes are booted and joined up front, by name)
#   ./e2e/demo.sh down        tear everything down (make demo-down)
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
MODE=etcd
[ "${1:-}" = containers ] && MODE=containers
# etcd: no node booted up front; the apply makes the machines spec.infra asks for.
NODES=0
IMAGE=flotilla-examples/etcd:3.4
CLUSTERFILE=$DIR/Clusterfile # examples/etcd/Clusterfile with the VIP below
# The machines examples/etcd/Clusterfile asks for (spec.infra: 3 masters, 3 nodes).
M1=demo-etcd-master-1 M2=demo-etcd-master-2 M3=demo-etcd-master-3
N1=demo-etcd-node-1 N2=demo-etcd-node-2
MACHINES=6
if [ "$MODE" = containers ]; then
	NODES=3
	IMAGE=flotilla-examples/containers:1
	CLUSTERFILE=$REPO/examples/containers/Clusterfile
fi
# The containers demo's throwaway upstream registry (Debian's docker-registry).
REGISTRY=${FLOTILLA_DEMO_REGISTRY:-127.0.0.1:5000}
APP_IMAGE=$REGISTRY/flotilla-examples/hello:1
VIP=${FLOTILLA_DEMO_VIP:-10.77.0.100}
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

# stop_registry stops the containers demo's throwaway registry, if it runs.
stop_registry() {
	[ -f "$DIR/registry.pid" ] || return 0
	pid=$(cat "$DIR/registry.pid")
	if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$DIR/registry.yml"; then
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 50); do
			[ -d "/proc/$pid" ] || break
			sleep 0.1
		done
	fi
	rm -f "$DIR/registry.pid"
}

# down removes everything a demo run created; safe to run at any time.
down() {
	stop_registry
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
	rm -rf "$DIR/controller" "$DIR/images" "$DIR/controller.log" "$DIR/registry" "$DIR/registry.yml" "$DIR/Clusterfile"
}

if [ "${1:-}" = down ]; then
	[ "$(id -u)" = 0 ] || die "must run as root (it removes network namespaces and containers)"
	down
	rm -rf "$DIR"
	echo "demo: everything removed"
	exit 0
fi
[ $# -eq 0 ] || [ "$1" = containers ] || die "usage: $0 [containers|down]"
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
if [ "$MODE" = containers ] && [ ! -x /usr/bin/docker-registry ]; then
	note "installing docker-registry with apt-get (the throwaway upstream registry)"
	apt-get install -y docker-registry >>"$LOGS/apt.log" 2>&1 ||
		{ apt-get update >>"$LOGS/apt.log" 2>&1 && apt-get install -y docker-registry >>"$LOGS/apt.log" 2>&1; } ||
		die "apt-get install docker-registry failed; see $LOGS/apt.log"
fi
need=etcd-server
[ "$MODE" = containers ] && need=containerd
if ! apt-cache show "$need" >/dev/null 2>&1; then
	note "apt has no $need in its lists: apt-get update"
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

if [ "$NODES" -gt 0 ]; then
	say "Booting $NODES nodes (systemd-nspawn, one network namespace each, bridge ${FLEET_NAME}0 on $SUBNET)"
else
	say "The sandbox network: bridge ${FLEET_NAME}0 on $SUBNET, no machines yet (the apply makes them)"
fi
t=$(now)
"$FLEET" -name "$FLEET_NAME" -subnet "$SUBNET" -n "$NODES" up >"$LOGS/fleet.log" 2>&1 || {
	tail -20 "$LOGS/fleet.log" >&2
	die "booting the fleet failed; see $LOGS/fleet.log"
}
sed 's/^/    /' "$LOGS/fleet.log" | grep -v '^    time=' || true
BOOT_S=$(since "$t")
HOST=$("$FLEET" -name "$FLEET_NAME" host-ip)
note "up in ${BOOT_S}s; the controller listens on $HOST"

say "Starting the controller on $HOST (data dir $DIR/controller, image store $FLOTILLA_STORE)"
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

if [ "$MODE" = containers ]; then
	say "A container image in a throwaway registry on $REGISTRY (Debian's busybox-static, one layer)"
	mkdir -p "$DIR/registry"
	printf 'version: 0.1\nlog: {level: warn, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: %s}\n' \
		"$DIR/registry" "$REGISTRY" >"$DIR/registry.yml"
	setsid /usr/bin/docker-registry serve "$DIR/registry.yml" >"$LOGS/registry.log" 2>&1 </dev/null &
	echo $! >"$DIR/registry.pid"
	for i in $(seq 50); do
		curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && break
		[ "$i" -lt 50 ] || die "the registry does not answer on $REGISTRY (port taken? set FLOTILLA_DEMO_REGISTRY); see $LOGS/registry.log"
		sleep 0.2
	done
	CGO_ENABLED=0 go build -o "$DIR/bin/busybox-image" ./e2e/cmd/busybox-image >>"$LOGS/build.log" 2>&1 || die "building busybox-image failed; see $LOGS/build.log"
	APP_DIGEST=$("$DIR/bin/busybox-image" "$APP_IMAGE" 2>"$LOGS/busybox-image.log") || die "building or pushing the container image failed; see $LOGS/busybox-image.log"
	APP_BY_DIGEST=${APP_IMAGE%:*}@$APP_DIGEST
	note "pushed $APP_IMAGE ($APP_DIGEST)"
	say "Building the cluster image $IMAGE from examples/containers (containerd, runc, the carried image)"
	t=$(now)
	"$BIN" build -t "$IMAGE" --build-arg "APP_IMAGE=$APP_IMAGE" examples/containers 2>&1 | tee "$LOGS/build-image.log" | grep -v '^time=' | sed 's/^/    /'
	note "built in $(since "$t")s"
	stop_registry
	note "the registry on $REGISTRY is stopped: from here on only the cluster image has $APP_IMAGE"
	"$BIN" inspect "$IMAGE" | sed -n '/Carried container images/,/^$/p' | sed 's/^/    /'
else
	say "Building the cluster image $IMAGE from examples/etcd"
	t=$(now)
	"$BIN" build -t "$IMAGE" examples/etcd 2>&1 | tee "$LOGS/build-image.log" | grep -v '^time=' | sed 's/^/    /'
	note "built in $(since "$t")s"
fi

if [ "$NODES" -gt 0 ]; then
	say "Joining every node with the bootstrap one-liner (flotilla token create)"
	"$BIN" token create "${CTL[@]}" --ttl 1h --description demo >"$LOGS/token.txt"
	ONELINER=$(grep -m1 -- '| sh -s -- --token' "$LOGS/token.txt" | sed 's/^ *//')
	[ -n "$ONELINER" ] || die "token create printed no one-liner; see $LOGS/token.txt"
	note "$(echo "$ONELINER" | sed 's/--token [^ ]*/--token <token>/')"
	t=$(now)
	"$FLEET" -name "$FLEET_NAME" exec-all sh -c "$ONELINER" >"$LOGS/bootstrap.log" 2>&1 || {
		tail -30 "$LOGS/bootstrap.log" >&2
		die "the one-liner failed on some node; see $LOGS/bootstrap.log"
	}
	grep -E 'registered|error' "$LOGS/bootstrap.log" | sed 's/^/    /' || true
	for i in $(seq 120); do
		online=$("$BIN" nodes "${CTL[@]}" -o json 2>/dev/null | grep -o '"online": *true' | wc -l)
		[ "$online" -ge "$NODES" ] && break
		[ "$i" -lt 120 ] || die "only $online of $NODES nodes online after 60s"
		sleep 0.5
	done
	BOOTSTRAP_S=$(since "$t")
	"$BIN" nodes "${CTL[@]}" | sed 's/^/    /'
	note "$NODES nodes joined and online in ${BOOTSTRAP_S}s"
fi

if [ "$MODE" = etcd ]; then
	sed -e "s/^  vip: .*/  vip: $VIP/" "$REPO/examples/etcd/Clusterfile" >"$CLUSTERFILE"
	say "flotilla apply -f examples/etcd/Clusterfile (spec.infra: 3 masters, 3 nodes; no host list)"
else
	say "flotilla apply -f examples/$MODE/Clusterfile"
fi
t=$(now)
set +e
"$BIN" apply "${CTL[@]}" -f "$CLUSTERFILE" 2>&1 | tee "$LOGS/apply.log"
rc=${PIPESTATUS[0]}
set -e
APPLY_S=$(since "$t")
[ "$rc" -ne 130 ] || exit 130 # Ctrl-C during the apply: clean up as interrupted
[ "$rc" -eq 0 ] || die "flotilla apply failed (exit $rc); see $LOGS/apply.log and $DIR/controller.log"
note "applied in ${APPLY_S}s"
if [ "$MODE" = etcd ]; then
	# The driver's own figure: from the start of the apply to the last machine's agent online.
	JOINED_S=$(sed -n 's/.*infra: [0-9]* machine(s) of [^ ]* created and joined in \([0-9.]*\)s.*/\1/p' "$LOGS/apply.log" | tail -1)
	[ -n "$JOINED_S" ] || JOINED_S="?"
	"$BIN" nodes "${CTL[@]}" | sed 's/^/    /'
	note "$MACHINES machines created and joined in ${JOINED_S}s of the ${APPLY_S}s apply"
fi

ex() { "$FLEET" -name "$FLEET_NAME" exec "$@"; }
if [ "$MODE" = containers ]; then
	say "Proving it: every node pulls $APP_IMAGE by its original name from its own agent's mirror"
	note "(the upstream registry is stopped; /etc/containerd/certs.d/_default/hosts.toml points containerd at https://127.0.0.1:505, trusting only the agent's mirror CA)"
	ex node1 cat /etc/containerd/certs.d/_default/hosts.toml | sed 's/^/    node1: hosts.toml: /'
	ctr=(/usr/local/bin/ctr --namespace k8s.io)
	for n in node1 node2 node3; do
		ex "$n" "${ctr[@]}" images rm --sync "$APP_IMAGE" >/dev/null 2>&1 || true
		for r in "$APP_BY_DIGEST" "$APP_IMAGE"; do
			ex "$n" "${ctr[@]}" images pull --hosts-dir /etc/containerd/certs.d "$r" >"$LOGS/pull-$n.log" 2>&1 ||
				{ cat "$LOGS/pull-$n.log" >&2; die "$n: ctr images pull $r failed"; }
		done
		got=$(ex "$n" "${ctr[@]}" images ls "name==$APP_IMAGE" | awk 'NR == 2 { print $3 }' | tr -d '\r')
		[ "$got" = "$APP_DIGEST" ] || die "$n: $APP_IMAGE is $got in containerd, upstream had $APP_DIGEST"
		note "$n\$ ctr images pull $APP_IMAGE, then by digest: $got (= upstream)"
		out=$(ex "$n" "${ctr[@]}" run --rm "$APP_IMAGE" "demo-$n-$$" | tr -d '\r')
		note "$n\$ ctr run $APP_IMAGE: $out"
	done

	say "Applying again: nothing left to do"
	t=$(now)
	"$BIN" apply "${CTL[@]}" -f "$CLUSTERFILE" >"$LOGS/apply-again.log" 2>&1 || die "second apply failed; see $LOGS/apply-again.log"
	REAPPLY_S=$(since "$t")
	tail -6 "$LOGS/apply-again.log" | sed 's/^/    /'
	cp "$DIR/controller.log" "$LOGS/controller.log"
	trap - EXIT
	cat <<EOT

$(printf '\033[1m')flotilla containers demo: done in $(since "$T0")s$(printf '\033[0m')
  boot of $NODES nodes        ${BOOT_S}s
  bootstrap (one-liner)  ${BOOTSTRAP_S}s   (all $NODES joined and online)
  apply of containers    ${APPLY_S}s   (containerd + $APP_IMAGE, upstream registry stopped)
  apply again            ${REAPPLY_S}s   (nothing to do)
  every node pulled $APP_IMAGE by tag and by digest from its own mirror and ran it

The nodes keep running. Try:
  $FLEET -name $FLEET_NAME exec node2 ${ctr[*]} images ls
  $FLEET -name $FLEET_NAME exec node3 ${ctr[*]} run --rm $APP_IMAGE again
  $BIN delete ${CTL[*]} -f $CLUSTERFILE --yes      # the mirrors then answer 404
Logs: $LOGS   Tear down: make demo-down
EOT
	exit 0
fi

say "Proving it: write on one member, read on another, read through the VIP from a worker"
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

say "Membership: a fourth master joins (count 3 -> 4), then leaves (4 -> 3)"
M4=demo-etcd-master-4
sed -i 's/^\(      master: {count: \)3}/\14}/' "$CLUSTERFILE"
grep -q 'master: {count: 4}' "$CLUSTERFILE" || die "could not raise the masters' count in $CLUSTERFILE"
t=$(now)
"$BIN" apply "${CTL[@]}" -f "$CLUSTERFILE" >"$LOGS/apply-join.log" 2>&1 || die "the apply adding $M4 failed; see $LOGS/apply-join.log"
JOIN_S=$(since "$t")
grep -E "join|health check|$M4: ok" "$LOGS/apply-join.log" | grep -v '^ *http' | head -8 | sed 's/^/    /'
MEMBERS=$(ex "$M1" /usr/local/bin/etcdctl --endpoints http://127.0.0.1:2379 member list | grep -c ', started, ')
[ "$MEMBERS" -eq 4 ] || die "etcd lists $MEMBERS started members after $M4 joined, want 4"
GOT=$(ex "$M4" /usr/local/bin/etcdctl --endpoints http://127.0.0.1:2379 get --print-value-only flotilla-demo | tr -d '\r')
[ "$GOT" = "$VALUE" ] || die "$M4 read '$GOT', want '$VALUE'"
note "$M4 joined: 4 started members; it reads flotilla-demo: $GOT"
sed -i 's/^\(      master: {count: \)4}/\13}/' "$CLUSTERFILE"
t=$(now)
"$BIN" apply "${CTL[@]}" -f "$CLUSTERFILE" >"$LOGS/apply-leave.log" 2>&1 || die "the apply removing $M4 failed; see $LOGS/apply-leave.log"
LEAVE_S=$(since "$t")
MEMBERS=$(ex "$M1" /usr/local/bin/etcdctl --endpoints http://127.0.0.1:2379 member list | grep -c ', started, ')
[ "$MEMBERS" -eq 3 ] || die "etcd lists $MEMBERS started members after $M4 left, want 3"
note "$M4 left: 3 started members, its machine destroyed"

say "Backup and restore: back up, write more, restore; what came after the backup is gone"
etcdm() { n=$1; shift; ex "$n" /usr/local/bin/etcdctl --endpoints http://127.0.0.1:2379 "$@" | tr -d '\r'; }
etcdm "$M1" put flotilla-before "written before the backup" >/dev/null
t=$(now)
"$BIN" backup "${CTL[@]}" demo-etcd -o json >"$LOGS/backup.json" 2>"$LOGS/backup.log" || die "flotilla backup failed; see $LOGS/backup.log"
BACKUP_S=$(since "$t")
REF=$(sed -n 's/.*"ref": *"\([^"]*\)".*/\1/p' "$LOGS/backup.json" | head -1)
[ -n "$REF" ] || die "flotilla backup printed no reference; see $LOGS/backup.json"
"$BIN" backups "${CTL[@]}" demo-etcd | sed 's/^/    /'
etcdm "$M2" put flotilla-after "written after the backup" >/dev/null
t=$(now)
"$BIN" restore "${CTL[@]}" demo-etcd --from "$REF" >"$LOGS/restore.log" 2>&1 || die "flotilla restore failed; see $LOGS/restore.log"
RESTORE_S=$(since "$t")
BEFORE=$(etcdm "$M3" get --print-value-only flotilla-before)
AFTER=$(etcdm "$M1" get --print-value-only flotilla-after)
[ "$BEFORE" = "written before the backup" ] || die "after the restore $M3 reads flotilla-before as '$BEFORE'"
[ -z "$AFTER" ] || die "after the restore $M1 still has flotilla-after ('$AFTER'): the restore did not take"
MEMBERS=$(etcdm "$M1" member list | grep -c ', started, ')
[ "$MEMBERS" -eq 3 ] || die "etcd lists $MEMBERS started members after the restore, want 3"
note "restored $REF: flotilla-before is there, flotilla-after is gone, 3 started members"

cp "$DIR/controller.log" "$LOGS/controller.log"
trap - EXIT
cat <<EOF

$(printf '\033[1m')flotilla demo: done in $(since "$T0")s$(printf '\033[0m')
  $MACHINES machines from a count  ${JOINED_S}s   (flotilla apply to every agent joined; Sealer's anchor: 30 s for 6 cloud nodes)
  apply of etcd          ${APPLY_S}s   (machines, then 3 masters and 3 workers with lvscare on VIP $VIP)
  apply again            ${REAPPLY_S}s   (nothing to do)
  etcd: written on $M1, read back on $M3 and through the VIP on $N1
  failover               ${FAILOVER_S}s   ($M1's etcd stopped until lvscare dropped it; then 10 of 10 reads via the VIP)
  a master joins         ${JOIN_S}s   (count 3 -> 4: machine made, etcd member add on a member, started, healthy)
  a master leaves        ${LEAVE_S}s   (count 4 -> 3: etcd member remove, machine destroyed)
  backup                 ${BACKUP_S}s   (etcd snapshot on one master, stored as an OCI artifact: $REF)
  restore                ${RESTORE_S}s   (on 3 masters: stop, snapshot restore as a new cluster, start, healthy)

The cluster keeps running. Try:
  $BIN status ${CTL[*]}
  $BIN backups ${CTL[*]}
  $FLEET -name $FLEET_NAME exec $M2 etcdctl member list
  $FLEET -name $FLEET_NAME exec $N1 etcdctl --endpoints http://$VIP:2379 get flotilla-demo
  edit the counts in $CLUSTERFILE and apply it again: $BIN apply ${CTL[*]} -f $CLUSTERFILE
Logs: $LOGS   Tear down: make demo-down
EOF
