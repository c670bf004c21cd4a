#!/usr/bin/env bash
# Stop the one-node SLURM cluster of tests/cluster/slurm_up.sh: only the daemons that script started (their pid
# files are listed in its state folder), slurmd first. Idempotent; packages and slurm.conf stay.
set -uo pipefail

STARTED=/var/lib/streamline-slurm/started
say() { echo "slurm_down: $*" >&2; }

if [ ! -s "$STARTED" ]; then
    say "nothing to stop (no daemon started by slurm_up.sh)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    say "not root (uid $(id -u)): cannot stop the daemons slurm_up.sh started as root"
    exit 1
fi
for name in slurmd slurmctld munged; do
    pidfile=$(awk -v n="$name" '$1 == n {print $2}' "$STARTED" | tail -1)
    [ -n "$pidfile" ] && [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$name" ]; then
        kill -TERM "$pid"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && say "$name (pid $pid) still running after 10s" || say "stopped $name (pid $pid)"
    fi
done
rm -f "$STARTED"
