#!/usr/bin/env bash
# Fails when the tests left any of their sandbox fleets behind (every test fleet's
# name starts with "flte", "flti" for the infra tests, "fltk" for Kubernetes): network namespace files, links, mounts, cgroups,
# node processes or state directories. make test runs it after the tests, so
# state that would break the next run is caught in this one.
set -uo pipefail
left=()
for p in /run/flotilla-e2e/flt[eik]* /var/lib/flotilla-e2e/flt[eik]* /run/netns/flt[eik]* /sys/fs/cgroup/*/flt[eik]*; do
	[ -e "$p" ] && left+=("$p")
done
while read -r name; do
	left+=("link $name")
done < <(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^flt[eik]' || true)
while read -r mp; do
	left+=("mount $mp")
done < <(awk '{print $5}' /proc/self/mountinfo | grep -E '^/(run|var/lib)/flotilla-e2e/flt[eik]' || true)
if [ ${#left[@]} -gt 0 ]; then
	echo "check-clean: the tests left these behind:" >&2
	printf '  %s\n' "${left[@]}" >&2
	exit 1
fi
echo "check-clean: no test fleet left behind"
