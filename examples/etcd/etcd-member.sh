#!/bin/sh
# flotilla-etcd-member: the image's JOIN and LEAVE, run by flotilla on a member that
# stays (with its local etcd at 127.0.0.1:2379):
#   flotilla-etcd-member add NAME PEER-URL     before a new member starts
#   flotilla-etcd-member remove PEER-URL       after a member left (or its machine died)
# Both are safe to repeat (a resumed rollout may run them again): adding a peer URL
# that is listed already, or removing one that is not, is done.
set -eu
usage() { echo "usage: flotilla-etcd-member add NAME PEER-URL | remove PEER-URL" >&2; exit 2; }
ctl() { ETCDCTL_API=3 /usr/local/bin/etcdctl --dial-timeout 2s --command-timeout 10s --endpoints http://127.0.0.1:2379 "$@"; }
# `member list` lines: ID, status, name, peer URLs, client URLs, is learner
id_of() { ctl member list | awk -F', ' -v u="$1" '{ n = split($4, urls, ","); for (i = 1; i <= n; i++) if (urls[i] == u) print $1 }'; }
# retry: etcd refuses a change while the last one settles ("unhealthy cluster"), for
# up to $ETCD_MEMBER_WAIT seconds (default 30).
retry() {
	end=$(($(date +%s) + ${ETCD_MEMBER_WAIT:-30}))
	until out=$("$@" 2>&1); do
		if [ "$(date +%s)" -ge "$end" ]; then
			echo "$out" >&2
			return 1
		fi
		sleep 1
	done
	echo "$out"
}
case "${1:-}" in
add)
	[ $# -eq 3 ] || usage
	if [ -n "$(retry id_of "$3")" ]; then
		echo "etcd: $2 ($3) is a member already: nothing to add"
		exit 0
	fi
	retry ctl member add "$2" --peer-urls="$3"
	;;
remove)
	[ $# -eq 2 ] || usage
	id=$(retry id_of "$2")
	if [ -z "$id" ]; then
		echo "etcd: no member has peer URL $2: nothing to remove"
		exit 0
	fi
	retry ctl member remove "$id"
	;;
*)
	usage
	;;
esac
