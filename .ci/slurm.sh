#!/usr/bin/env bash
# A real one-node SLURM on this host for the SLURM launcher test (no systemd needed):
# munge, MariaDB + slurmdbd (so `sacct` works and submitit never waits forever on a dead
# job), slurmctld and slurmd, all started as background processes.
#   bash .ci/slurm.sh start   # install (Debian packages) if missing, configure, start, wait until idle
#   bash .ci/slurm.sh stop
#   bash .ci/slurm.sh conf    # prints the SLURM_CONF path every client needs
# State (configs, logs, spool) lives in outputs/slurm of this checkout, or $SLURM_CI_DIR.
set -euo pipefail
STATE=${SLURM_CI_DIR:-$(cd "$(dirname "$0")/.." && pwd)/outputs/slurm}
export SLURM_CONF=$STATE/slurm.conf
CLUSTER=shadowsweep

log() { echo "[slurm.sh] $*" >&2; }

wait_for() {  # seconds, description, command...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    log "timed out waiting for $what"; tail -n 30 "$STATE"/log/*.log >&2 || true
    return 1
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v munged >/dev/null \
        && command -v mariadbd >/dev/null; then return; fi
    log "installing slurm-wlm, slurmdbd, munge, mariadb-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd munge mariadb-server >/dev/null
}

start_munge() {
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    chmod 0400 /etc/munge/munge.key
    pgrep -x munged >/dev/null || runuser -u munge -- munged
    wait_for 20 munged munge -n
}

start_mariadb() {
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --skip-test-db >/dev/null
    if ! mariadb-admin ping >/dev/null 2>&1; then
        mariadbd --user=mysql --bind-address=127.0.0.1 --socket=/run/mysqld/mysqld.sock \
            --pid-file=/run/mysqld/mariadb.pid >"$STATE/log/mariadb.log" 2>&1 &
    fi
    wait_for 60 mariadb mariadb-admin ping
    # A fresh slurmctld (new checkout) numbers jobs from 1 again: old accounting rows with the
    # same job ids would make sacct report old states (submitit then gives up on a running job).
    pgrep -x slurmdbd >/dev/null || mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db"
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

write_configs() {
    local node cpus memory
    node=$(hostname -s)
    cpus=$(nproc)
    memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    memory=$((memory * 9 / 10))
    cat >"$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
EOF
    chmod 600 "$STATE/slurmdbd.conf"
    cat >"$SLURM_CONF" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    local began=$SECONDS
    install_packages
    mkdir -p "$STATE"/{log,run,spool/ctld,spool/d}
    start_munge
    start_mariadb
    write_configs
    pgrep -x slurmdbd >/dev/null || (slurmdbd -D >>"$STATE/log/slurmdbd.log" 2>&1 &)
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
    pgrep -x slurmctld >/dev/null || (slurmctld -D -i >>"$STATE/log/slurmctld.log" 2>&1 &)
    pgrep -x slurmd >/dev/null || (slurmd -D >>"$STATE/log/slurmd.log" 2>&1 &)
    wait_for 60 "an idle node" bash -c "sinfo -h -o %t | grep -q idle"
    wait_for 30 "sacct" sacct -n -X
    log "up in $((SECONDS - began)) s; export SLURM_CONF=$SLURM_CONF"
}

stop() {
    for daemon in slurmd slurmctld slurmdbd; do pkill -x "$daemon" || true; done
    mariadb-admin shutdown 2>/dev/null || true
    pkill -x munged || true
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    conf) echo "$SLURM_CONF" ;;
    *) echo "usage: $0 start|stop|conf" >&2; exit 2 ;;
esac
