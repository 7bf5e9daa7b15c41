#!/bin/sh
# flotilla-etcd-health: the image's CMD, run by flotilla on master0 after every phase.
#   flotilla-etcd-health IP...     (the Clusterfile's masters)
# While fewer members than a quorum have been started (the masters phase has not run
# yet: members start one at a time), it reports the cluster as forming and succeeds.
# Otherwise it waits up to $ETCD_HEALTH_WAIT seconds (default 60) for every started
# member to report healthy (`etcdctl endpoint health`) and fails with etcdctl's output.
set -u
[ $# -gt 0 ] || { echo "usage: flotilla-etcd-health MASTER-IP..." >&2; exit 2; }
wait=${ETCD_HEALTH_WAIT:-60}
quorum=$(($# / 2 + 1))
end=$(($(date +%s) + wait))
while :; do
	started=""
	n=0
	for ip in "$@"; do
		# curl exits 7 when nothing listens: that member has not been started yet.
		curl -s -o /dev/null -m 2 "http://$ip:2379/health"
		if [ $? -ne 7 ]; then
			started="$started${started:+,}http://$ip:2379"
			n=$((n + 1))
		fi
	done
	if [ "$n" -lt "$quorum" ]; then
		echo "etcd cluster forming: $n of $# members started (quorum $quorum); nothing to check yet"
		exit 0
	fi
	if out=$(/usr/local/bin/etcdctl --dial-timeout 2s --command-timeout 3s --endpoints "$started" endpoint health 2>&1); then
		echo "$out"
		echo "etcd cluster healthy: $n of $# members started, all healthy"
		exit 0
	fi
	if [ "$(date +%s)" -ge "$end" ]; then
		echo "$out"
		echo "etcd cluster unhealthy after ${wait}s: $n of $# members started" >&2
		exit 1
	fi
	sleep 1
done
