#!/bin/sh
# flotilla-etcd-restore: the image's second RESTORE stage, run by `flotilla restore` on every
# master at once, after the first stage stopped etcd everywhere.
#   flotilla-etcd-restore CLUSTER MEMBER-IP MASTER-IP...
# Env: FLOTILLA_BACKUP (the snapshot, fetched and verified by flotilla), FLOTILLA_RESTORE
# (this restore's id: the same on every member and when the stage is repeated),
# ETCD_DATA_DIR (the member's data dir).
#
# Restores the snapshot into a fresh data dir with this member's own name and peer URL,
# the current masters as the initial cluster and a NEW cluster token (<cluster>-restore-
# <restore id>: a new cluster id, so no member of the old cluster can talk to the new one),
# then swaps it in. The data dir it replaces is kept aside as $ETCD_DATA_DIR.before-restore
# (the previous one there is dropped); running the stage again for the same restore keeps
# that copy and restores again. The unit's --initial-cluster* flags are ignored by etcd once
# a data dir exists, so the unit needs no change.
set -eu
[ $# -ge 3 ] || { echo "usage: flotilla-etcd-restore CLUSTER MEMBER-IP MASTER-IP..." >&2; exit 2; }
: "${FLOTILLA_BACKUP:?run by flotilla restore (FLOTILLA_BACKUP is unset)}"
: "${FLOTILLA_RESTORE:?run by flotilla restore (FLOTILLA_RESTORE is unset)}"
: "${ETCD_DATA_DIR:?ETCD_DATA_DIR is unset}"
cluster=$1 member=$2
shift 2
initial=""
for ip in "$@"; do
	initial="$initial${initial:+,}$ip=http://$ip:2380"
done
token="$cluster-restore-$FLOTILLA_RESTORE"
data=$ETCD_DATA_DIR
new=$data.restoring
old=$data.before-restore
mark=$old/.flotilla-restore

if systemctl is-active --quiet flotilla-etcd.service; then
	echo "flotilla-etcd.service is running: the first RESTORE stage stops it" >&2
	exit 1
fi
rm -rf "$new"
ETCDCTL_API=3 /usr/local/bin/etcdctl snapshot restore "$FLOTILLA_BACKUP" \
	--name "$member" --data-dir "$new" \
	--initial-cluster "$initial" --initial-cluster-token "$token" \
	--initial-advertise-peer-urls "http://$member:2380"
if [ -d "$old" ] && [ "$(cat "$mark" 2>/dev/null)" = "$FLOTILLA_RESTORE" ]; then
	# This restore ran here before: $old already holds the data from before it.
	rm -rf "$data"
elif [ -d "$data" ]; then
	rm -rf "$old"
	mv "$data" "$old"
	printf '%s\n' "$FLOTILLA_RESTORE" >"$mark"
fi
mv "$new" "$data"
echo "member $member restored from the snapshot: cluster token $token, initial cluster $initial; the data from before is in $old"
