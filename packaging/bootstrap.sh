#!/bin/sh
# flotilla bootstrap: install the flotilla agent on this node and join it to a controller.
#
#   f=$(mktemp) && curl -fsSLk -o "$f" https://CONTROLLER:9443/v1/ca.crt &&
#   echo "H  $f" | sha256sum -c - &&
#   curl -fsSL --cacert "$f" -w '%{onerror}\nexit 1\n' https://CONTROLLER:9443/bootstrap.sh |
#   sh -s -- --token T --ca-hash sha256:H --ca-file "$f"
#
# (one line: `flotilla token create` prints it). Trust: the one-liner checks the
# controller's CA against its hash before it fetches this script, over TLS
# verified with that CA, so it never runs bytes it has not verified. The script
# pins the same CA again (--ca-file, or a fetch checked against --ca-hash: the
# sha256 of the exact PEM bytes) and from then on talks to the controller only
# with that CA. It installs /usr/local/bin/flotilla,
# /etc/flotilla/{ca.crt,agent.env} and flotilla-agent.service, starts the agent
# through systemd and waits until it is registered. Any failure exits non-zero
# and puts back what this run changed. Running it again is harmless.
set -eu

# Everything runs from main, called on the last line: a download cut short
# runs nothing, and nothing after that line (curl's -w text) runs either.
main() {

CONTROLLER='@@CONTROLLER@@' # filled in by the controller that serves this script
TOKEN=
CA_HASH=
CA_FILE=
NAME=
LABELS=
DATA_DIR=/var/lib/flotilla-agent
TIMEOUT=120
BIN=/usr/local/bin/flotilla
CONF_DIR=/etc/flotilla
UNIT=flotilla-agent.service
UNIT_FILE=/etc/systemd/system/$UNIT

say() { echo "flotilla-bootstrap: $*" >&2; }
usage() {
	cat >&2 <<EOF
usage: sh bootstrap.sh --token TOKEN --ca-hash sha256:HEX [--ca-file FILE] [--controller https://HOST:9443]
                       [--name NAME] [--labels k=v,...] [--data-dir DIR] [--timeout SECONDS]
Get the exact command from the controller: flotilla token create
EOF
	exit 2
}

while [ $# -gt 0 ]; do
	case "$1" in
	--token) TOKEN=${2:-}; shift 2 || usage ;;
	--ca-hash) CA_HASH=${2:-}; shift 2 || usage ;;
	--ca-file) CA_FILE=${2:-}; shift 2 || usage ;;
	--controller) CONTROLLER=${2:-}; shift 2 || usage ;;
	--name) NAME=${2:-}; shift 2 || usage ;;
	--labels) LABELS=${2:-}; shift 2 || usage ;;
	--data-dir) DATA_DIR=${2:-}; shift 2 || usage ;;
	--timeout) TIMEOUT=${2:-}; shift 2 || usage ;;
	-h | --help) usage ;;
	*) say "unknown argument: $1"; usage ;;
	esac
done

# --- rollback: everything this run changes is recorded so a failure can undo it
WORK=
BACKUP=
CREATED=      # paths this run created (removed on failure)
BACKED_UP=    # paths this run replaced (restored on failure)
WAS_ACTIVE=no # was the agent running before this run?
WAS_ENABLED=no
TOUCHED_UNIT=no
DONE=no

rollback() {
	if [ "$TOUCHED_UNIT" = yes ]; then
		systemctl stop "$UNIT" >/dev/null 2>&1 || true
		[ "$WAS_ENABLED" = yes ] || systemctl disable "$UNIT" >/dev/null 2>&1 || true
	fi
	for p in $CREATED; do rm -rf "$p"; done
	for p in $BACKED_UP; do
		b="$BACKUP$p"
		if [ -e "$b" ]; then mv -f "$b" "$p"; fi
	done
	if [ "$TOUCHED_UNIT" = yes ]; then
		systemctl daemon-reload >/dev/null 2>&1 || true
		systemctl reset-failed "$UNIT" >/dev/null 2>&1 || true
		if [ "$WAS_ACTIVE" = yes ]; then systemctl start "$UNIT" >/dev/null 2>&1 || true; fi
	fi
}

finish() {
	rc=$?
	if [ "$DONE" != yes ]; then
		rollback
		[ -n "$CREATED$BACKED_UP" ] && say "undid the changes of this run; the node is as it was"
		[ "$rc" = 0 ] && rc=1
	fi
	[ -n "$WORK" ] && rm -rf "$WORK"
	# The one-liner's temporary copy of the CA (mktemp), and nothing else.
	case "$CA_FILE" in "${TMPDIR:-/tmp}"/tmp.*) [ -f "$CA_FILE" ] && [ ! -L "$CA_FILE" ] && rm -f "$CA_FILE" ;; esac
	exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

die() { say "error: $*"; exit 1; }

# place installs SRC at DEST atomically with MODE, recording how to undo it.
# It returns 1 when DEST already had that content. (Called in an && list, so
# errexit is off inside: every step checks for itself.)
place() {
	src=$1 dest=$2 mode=$3
	if [ -e "$dest" ]; then
		if cmp -s "$src" "$dest"; then chmod "$mode" "$dest" || die "chmod $dest"; return 1; fi
		mkdir -p "$BACKUP$(dirname "$dest")" && cp -p "$dest" "$BACKUP$dest" || die "cannot back up $dest"
		BACKED_UP="$BACKED_UP $dest"
	else
		CREATED="$CREATED $dest"
	fi
	cp "$src" "$dest.flotilla-new" && chmod "$mode" "$dest.flotilla-new" && mv -f "$dest.flotilla-new" "$dest" ||
		{ rm -f "$dest.flotilla-new"; die "cannot install $dest"; }
	return 0
}

mkdirs() {
	for d in "$@"; do
		[ -d "$d" ] && continue
		top=$d
		while [ ! -d "$(dirname "$top")" ]; do top=$(dirname "$top"); done
		mkdir -p "$d"
		CREATED="$top $CREATED"
	done
}

sha256() { sha256sum "$1" | cut -d' ' -f1; }

# agent_log prints the agent's own recent output, each distinct line once
# (systemd's restart chatter left out), or systemd's lines when it said nothing.
agent_log() {
	out=$(journalctl _SYSTEMD_UNIT="$UNIT" -n 40 --no-pager -o cat 2>/dev/null | awk '!seen[$0]++' | tail -n 10)
	[ -n "$out" ] || out=$(journalctl -u "$UNIT" -n 10 --no-pager -o cat 2>&1)
	echo "$out"
}

# --- checks before touching anything
[ -n "$TOKEN" ] || { say "error: --token is missing"; usage; }
case "$CA_HASH" in
sha256:*) ;;
*) say "error: --ca-hash must look like sha256:<64 hex digits>"; usage ;;
esac
WANT_HASH=$(echo "${CA_HASH#sha256:}" | tr 'A-F' 'a-f')
[ ${#WANT_HASH} = 64 ] || die "--ca-hash must have 64 hex digits after sha256:"
case "$CONTROLLER" in
https://*) ;;
*) die "--controller must be an https:// URL (got '$CONTROLLER')" ;;
esac
CONTROLLER=${CONTROLLER%/}
# These go into the unit's ExecStart: plain characters only.
case "${CONTROLLER#https://}" in '' | *[!A-Za-z0-9.:\[\]-]*) die "--controller must be https://HOST[:PORT] (got '$CONTROLLER')" ;; esac
case "$NAME" in *[!a-z0-9.-]*) die "--name may hold only a-z, 0-9, '.' and '-' (got '$NAME')" ;; esac
case "$LABELS" in *[!A-Za-z0-9._/=,-]*) die "--labels must look like k=v,k2=v2 with letters, digits, '.', '_', '/' and '-' (got '$LABELS')" ;; esac
case "$TIMEOUT" in '' | *[!0-9]*) die "--timeout must be a number of seconds" ;; esac
[ "$(id -u)" = 0 ] || die "run as root (it installs $BIN and a systemd unit): ... | sudo sh -s -- ..."
for c in curl sha256sum systemctl; do
	command -v "$c" >/dev/null 2>&1 || die "'$c' is missing on this node; install it and run again"
done
[ -d /run/systemd/system ] || die "systemd is not running on this node (no /run/systemd/system): the agent runs as a systemd service"

case "$(uname -m)" in
x86_64 | amd64) ARCH=amd64 ;;
aarch64 | arm64) ARCH=arm64 ;;
*) die "unsupported architecture $(uname -m): flotilla ships linux/amd64 and linux/arm64" ;;
esac

WORK=$(mktemp -d /tmp/flotilla-bootstrap.XXXXXX)
BACKUP=$WORK/backup

# --- 1. pin the controller's CA by its hash: the one-liner's copy, or the only
# unverified fetch
if [ -n "$CA_FILE" ]; then
	cp "$CA_FILE" "$WORK/ca.crt" || die "cannot read --ca-file $CA_FILE"
else
	curl -fsS -k --max-time 30 -o "$WORK/ca.crt" "$CONTROLLER/v1/ca.crt" ||
		die "cannot fetch the CA from $CONTROLLER/v1/ca.crt (is the controller running and reachable from this node?)"
fi
GOT_HASH=$(sha256 "$WORK/ca.crt")
if [ "$GOT_HASH" != "$WANT_HASH" ]; then
	die "CA hash mismatch: $CONTROLLER serves a CA with sha256:$GOT_HASH but --ca-hash is sha256:$WANT_HASH.
  Nothing was installed. Check that the command is exactly what 'flotilla token create' printed;
  if it is, something between this node and the controller is intercepting the connection."
fi
say "controller CA verified (sha256:$GOT_HASH)"
fetch() { curl -fsS --cacert "$WORK/ca.crt" --max-time 300 -o "$2" "$CONTROLLER$1"; }

# --- 2. the agent binary, verified
fetch "/v1/agent/flotilla-linux-$ARCH" "$WORK/flotilla" ||
	die "cannot download the linux/$ARCH agent from $CONTROLLER/v1/agent/flotilla-linux-$ARCH"
fetch "/v1/agent/flotilla-linux-$ARCH.sha256" "$WORK/flotilla.sha256" ||
	die "cannot download $CONTROLLER/v1/agent/flotilla-linux-$ARCH.sha256"
WANT_BIN=$(cut -d' ' -f1 <"$WORK/flotilla.sha256")
GOT_BIN=$(sha256 "$WORK/flotilla")
[ "$GOT_BIN" = "$WANT_BIN" ] || die "the downloaded agent has sha256:$GOT_BIN, the controller says sha256:$WANT_BIN: download corrupted, try again"
say "agent binary linux/$ARCH verified (sha256:$GOT_BIN)"

# --- 3. config and unit
umask 077
{
	echo "# flotilla agent settings; written by bootstrap.sh. The token is only needed for the first join."
	echo "FLOTILLA_TOKEN=$TOKEN"
} >"$WORK/agent.env"
umask 022
args="agent --controller $CONTROLLER --ca-file $CONF_DIR/ca.crt --data-dir $DATA_DIR"
[ -n "$NAME" ] && args="$args --name $NAME"
[ -n "$LABELS" ] && args="$args --labels $LABELS"
cat >"$WORK/unit" <<EOF
[Unit]
Description=flotilla agent: runs the controller's tasks on this node
Documentation=https://github.com/flotilla-dev/flotilla
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
EnvironmentFile=$CONF_DIR/agent.env
ExecStart=$BIN $args
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
EOF

systemctl is-active --quiet "$UNIT" && WAS_ACTIVE=yes
systemctl is-enabled --quiet "$UNIT" 2>/dev/null && WAS_ENABLED=yes
mkdirs "$CONF_DIR" "$(dirname "$BIN")" "$DATA_DIR"
changed=no
place "$WORK/flotilla" "$BIN" 0755 && changed=yes
place "$WORK/ca.crt" "$CONF_DIR/ca.crt" 0644 && changed=yes
place "$WORK/agent.env" "$CONF_DIR/agent.env" 0600 && changed=yes
TOUCHED_UNIT=yes
place "$WORK/unit" "$UNIT_FILE" 0644 && changed=yes

# --- 4. start through systemd
systemctl daemon-reload || die "systemctl daemon-reload failed"
systemctl enable "$UNIT" >/dev/null 2>&1 || die "systemctl enable $UNIT failed"
if [ "$changed" = yes ] || [ "$WAS_ACTIVE" = no ]; then
	systemctl restart "$UNIT" || die "systemctl restart $UNIT failed:
$(agent_log | sed 's/^/  /')"
	say "agent started ($UNIT)"
else
	say "agent already installed and running; nothing changed"
fi

# --- 5. wait until it has joined
i=0
while ! "$BIN" agent status --data-dir "$DATA_DIR" >/dev/null 2>&1; do
	i=$((i + 1))
	restarts=$(systemctl show -p NRestarts --value "$UNIT" 2>/dev/null || echo 0)
	if [ "${restarts:-0}" -ge 3 ] || [ "$i" -ge $((TIMEOUT * 2)) ]; then
		why="did not register within ${TIMEOUT}s"
		[ "${restarts:-0}" -ge 3 ] && why="keeps exiting (restarted $restarts times)"
		die "the agent $why. What it said last:
$(agent_log | sed 's/^/  /')
  (full log: journalctl -u $UNIT)"
	fi
	sleep 0.5
done
DONE=yes
say "node registered with $CONTROLLER ($("$BIN" agent status --data-dir "$DATA_DIR" 2>/dev/null | head -n 1))"
}

main "$@"
exit
