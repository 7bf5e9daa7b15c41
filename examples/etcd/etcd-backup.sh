#!/bin/sh
# flotilla-etcd-backup: the image's BACKUP, run by `flotilla backup` on one healthy master.
#   flotilla-etcd-backup          (no arguments; $FLOTILLA_BACKUP names the file to write)
# Saves a snapshot of the local member (etcdctl snapshot save from 127.0.0.1:2379, a
# consistent point-in-time copy of the keyspace) to $FLOTILLA_BACKUP; flotilla uploads it.
set -eu
: "${FLOTILLA_BACKUP:?run by flotilla backup (FLOTILLA_BACKUP is unset)}"
ETCDCTL_API=3 /usr/local/bin/etcdctl --dial-timeout 5s --command-timeout 60s \
	--endpoints http://127.0.0.1:2379 snapshot save "$FLOTILLA_BACKUP"
