#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine for the tests marked `slurm`
# (tests/stages/test_data_engines.py): munged, slurmctld and slurmd, all on 127.0.0.1, no cgroups,
# no accounting, state and logs under /tmp/hfstack-slurm. Needs root and Debian's slurm-wlm and munge:
#
#     apt-get install -y slurm-wlm munge && tests/slurm_cluster.sh
#
# Idempotent: a cluster that already answers is left alone. Exits non-zero with a one-line reason when
# the cluster cannot be started (the tests then skip and say so).
set -uo pipefail

STATE=/tmp/hfstack-slurm
CONF=/etc/slurm/slurm.conf
MARK="# written by hfstack tests/slurm_cluster.sh"

fail() { echo "slurm_cluster.sh: $*" >&2; exit 1; }
node_ready() { sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }

for tool in munged slurmctld slurmd sbatch sinfo; do
  command -v "$tool" >/dev/null || fail "$tool not found: apt-get install slurm-wlm munge"
done
if node_ready; then echo "slurm cluster already up: $(sinfo -h -o '%P %D %T')"; exit 0; fi
[ "$(id -u)" = 0 ] || fail "needs root (it starts munged, slurmctld and slurmd)"

mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/log" /etc/slurm

# --- munge: the key comes with Debian's package; munged refuses to run as root, so run it as munge
if ! pgrep -x munged >/dev/null; then
  [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || create-munge-key >/dev/null 2>&1; } \
    || fail "cannot create /etc/munge/munge.key"
  chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged || fail "munged did not start (see /var/log/munge/munged.log)"
fi
munge -n | unmunge >/dev/null 2>&1 || fail "munge credentials do not round-trip (munge -n | unmunge)"

# --- slurm.conf: one node (this host, at 127.0.0.1) in one partition "debug"; never overwrite a foreign one
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  fail "$CONF exists and was not written by this script; not touching it"
fi
HOST=$(hostname -s)
CPUS=$(nproc)
MEMORY=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)  # below the real size: no "Low RealMemory"
cat > "$CONF" <<EOF
$MARK
ClusterName=hfstack
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x slurmctld >/dev/null || slurmctld || fail "slurmctld did not start (see $STATE/log/slurmctld.log)"
pgrep -x slurmd >/dev/null || slurmd || fail "slurmd did not start (see $STATE/log/slurmd.log)"

for _ in $(seq 30); do
  node_ready && { echo "slurm cluster up: $(sinfo -h -o '%P %D %T')"; exit 0; }
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  sleep 1
done
fail "node $HOST not ready after 30 s: $(sinfo -h -o '%T %E' 2>&1 | head -1)"
