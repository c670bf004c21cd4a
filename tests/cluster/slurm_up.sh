#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine (tests/test_slurm.py, .ci/run). Idempotent: a cluster that is
# already up is left as it is. Needs root: installs Debian's slurm-wlm and munge with apt-get when missing, writes
# /etc/slurm/slurm.conf (never over one it did not write), starts munged, slurmctld and slurmd, and waits until
# `sinfo` shows the node idle. tests/cluster/slurm_down.sh stops what this started.
#
# The node has this machine's CPUs (nproc) and memory, one partition (streamline), no cgroups (containers have no
# writable cgroup tree: proctrack/linuxproc, task/none), no accounting database (jobs are tracked with squeue, so
# finished jobs stay visible for MinJobAge seconds), and a count-only `gpu` GRES (no device behind it) so a job
# that asks for GPUs is scheduled and its --gpus request reaches slurmctld; nothing runs on a GPU.
#
# Environment: SLURM_UP_TIMEOUT (seconds to wait for the idle node, default 60), SLURM_UP_GPUS (count of the fake
# GRES, default 1; 0 leaves it out).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARK="# written by llm-streamline tests/cluster/slurm_up.sh"
STATE=/var/lib/streamline-slurm
LOGS=/var/log/streamline-slurm
TIMEOUT=${SLURM_UP_TIMEOUT:-60}
GPUS=${SLURM_UP_GPUS:-1}
PARTITION=streamline

say() { echo "slurm_up: $*" >&2; }
fail() { say "$*"; exit 1; }

# What this script started, one "name pidfile" a line, for slurm_down.sh (it stops those and nothing else).
STARTED=$STATE/started
started() { for _ in $(seq 20); do [ -s "$2" ] && break; sleep 0.25; done; echo "$1 $2" >>"$STARTED"; }
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
node_state() { timeout 10 sinfo -h -p "$PARTITION" -o %t 2>/dev/null | head -1 || true; }

if [ "$(id -u)" != 0 ]; then
    fail "not root (uid $(id -u)): installing slurm-wlm/munge and starting slurmctld/slurmd needs root; run it as root or with sudo"
fi

if command -v sinfo >/dev/null && [ -f "$CONF" ] && grep -qF "$MARK" "$CONF" && [ "$(node_state)" = idle ]; then
    say "already up: node $(hostname -s) idle in partition $PARTITION"
    exit 0
fi

# 1. Packages.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null \
    || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || fail "slurm-wlm/munge are not installed and there is no apt-get to install them"
    say "installing slurm-wlm and munge with apt-get"
    mkdir -p "$LOGS"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >"$LOGS/apt.log" 2>&1; then
        apt-get update -q >>"$LOGS/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$LOGS/apt.log" 2>&1 \
            || fail "apt-get install slurm-wlm munge failed (see $LOGS/apt.log)"
    fi
fi

# 2. slurm.conf: this machine as the only node.
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    fail "$CONF exists and was not written by this script; not touching a site's SLURM configuration"
fi
HOST=$(hostname -s)
CPUS=$(nproc)
# The memory slurmd detects (RealMemory above it would drain the node), less 5% for the daemons.
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
mkdir -p "$CONF_DIR" "$STATE/slurmctld" "$STATE/slurmd" "$LOGS"
GRES_LINE="" NODE_GRES=""
if [ "$GPUS" -gt 0 ]; then
    GRES_LINE="GresTypes=gpu"
    NODE_GRES="Gres=gpu:$GPUS"
    printf '%s\nNodeName=%s Name=gpu Count=%s File=/dev/null\n' "$MARK" "$HOST" "$GPUS" >"$CONF_DIR/gres.conf"
else
    rm -f "$CONF_DIR/gres.conf"
fi
cat >"$CONF.tmp" <<EOF
$MARK
ClusterName=streamline
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/streamline-slurmctld.pid
SlurmdPidFile=/run/streamline-slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
# squeue is the status command (no accounting): a finished job must stay listed for longer than the executor's
# status-check interval, or the executor cannot see how it ended.
MinJobAge=3600
KillWait=5
SlurmdTimeout=60
$GRES_LINE
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $NODE_GRES State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
mv "$CONF.tmp" "$CONF"
say "wrote $CONF: node $HOST, $CPUS CPUs, $MEM_MB MB, partition $PARTITION, gpu GRES $GPUS"

# 3. munge: a key if there is none, then the daemon.
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    say "generated /etc/munge/munge.key"
fi
MUNGE_USER=$(id -u munge >/dev/null 2>&1 && echo munge || echo root)
chown "$MUNGE_USER": /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown "$MUNGE_USER": /run/munge /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ "$MUNGE_USER" = root ]; then
        munged --force
    else
        runuser -u munge -- munged
    fi
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || fail "munged did not start (see /var/log/munge/munged.log)"
    started munged /run/munge/munged.pid
fi

# 4. The daemons (a running one re-reads the new slurm.conf).
if pid_alive /run/streamline-slurmctld.pid; then
    scontrol reconfigure >/dev/null 2>&1 || true
else
    slurmctld || fail "slurmctld did not start (see $LOGS/slurmctld.log)"
    started slurmctld /run/streamline-slurmctld.pid
fi
if ! pid_alive /run/streamline-slurmd.pid; then
    slurmd || fail "slurmd did not start (see $LOGS/slurmd.log)"
    started slurmd /run/streamline-slurmd.pid
fi

# 5. Wait for the node.
deadline=$((SECONDS + TIMEOUT))
while [ $SECONDS -lt $deadline ]; do
    state=$(node_state)
    case "$state" in
        idle) say "up: node $HOST idle in partition $PARTITION (${SECONDS}s)"; exit 0 ;;
        drain* | down*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
fail "node $HOST not idle after ${TIMEOUT}s (state: ${state:-no answer}); see $LOGS/slurmctld.log and $LOGS/slurmd.log"
