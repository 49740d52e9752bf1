#!/usr/bin/env bash
# start-local-slurm.sh - a REAL single-node Slurm cluster on localhost, for the tests and CI.
#
# Adapted from shared/notes/local-slurm (Debian 12, Slurm 22.05 from Debian's own packages, no
# systemd, running as root). Idempotent: it installs, configures and starts only what is missing,
# so running it again on a cluster that is up is a no-op (~0.3 s).
#   1. apt-get installs munge, slurmctld, slurmd, slurm-client (+ slurmdbd, mariadb-server for
#      accounting) if missing, without letting Debian's postinst start the distro services.
#   2. starts munged (Slurm's authentication) on its default socket.
#   3. accounting: a private MariaDB on 127.0.0.1 with its data under $SLURM_LAB, then slurmdbd.
#      submitit reads job states with sacct; without accounting a job that dies without writing
#      its result pickle leaves job.result() waiting forever on state UNKNOWN.
#   4. writes /etc/slurm/slurm.conf (+ gres.conf, slurmdbd.conf), starts slurmctld and slurmd;
#      if the config changed while they run (e.g. another SLURM_FAKE_GPUS), restarts both.
#   5. waits until `sinfo` shows the node idle with the requested GRES.
# Every daemon has its pid file under $SLURM_LAB/run; stop-local-slurm.sh stops exactly those.
#
# Knobs (environment, all optional):
#   SLURM_FAKE_GPUS=2    declare N fake "gpu" GRES so `--gres=gpu:1` is accepted and jobs get
#                        CUDA_VISIBLE_DEVICES (there is no GPU behind it). 0 = a node without GPUs:
#                        `--gres=gpu:1` is then rejected with "Invalid generic resource".
#                        Changing it on a running cluster restarts slurmctld+slurmd (2-3 s).
#   SLURM_ACCOUNTING=1   0 = no MariaDB/slurmdbd: sacct then fails ("accounting storage is
#                        disabled"); tests/support/cluster.py and submitit need sacct.
#   SLURM_LAB=/tmp/slurmlab  state, logs, pid files, MariaDB data, fake GPU devices
#   SLURM_PARTITION=debug  SLURM_CLUSTER=local  SLURM_MYSQL_PORT=3306
#   SLURM_FORCE_CONF=0   1 = overwrite an /etc/slurm/*.conf that this script did not write
set -euo pipefail

SLURM_FAKE_GPUS=${SLURM_FAKE_GPUS:-2}
SLURM_ACCOUNTING=${SLURM_ACCOUNTING:-1}
SLURM_LAB=${SLURM_LAB:-/tmp/slurmlab}
SLURM_PARTITION=${SLURM_PARTITION:-debug}
SLURM_CLUSTER=${SLURM_CLUSTER:-local}
SLURM_MYSQL_PORT=${SLURM_MYSQL_PORT:-3306}
SLURM_FORCE_CONF=${SLURM_FORCE_CONF:-0}

# Debian's Slurm is built with sysconfdir /etc/slurm: every client (sbatch, squeue, sacct, srun
# inside jobs, submitit's subprocesses) finds the config there without SLURM_CONF.
CONF_DIR=/etc/slurm
MARKER="# managed-by: start-local-slurm.sh"
# The node name is fixed and slurmd is started with -N localhost, so the hostname does not matter.
NODE=localhost
DB_NAME=slurm_acct_db DB_USER=slurm DB_PASS=slurm-local-only
RUN=$SLURM_LAB/run LOG=$SLURM_LAB/log
MYSQL_DIR=$SLURM_LAB/mysql MYSQL_RUN=$SLURM_LAB/mysql-run
MYSQL_SOCK=$MYSQL_RUN/mysqld.sock

T0=${EPOCHREALTIME/./}
say() {
    local t=$(( (${EPOCHREALTIME/./} - T0) / 100000 ))
    printf '[start-local-slurm %3d.%ds] %s\n' $((t / 10)) $((t % 10)) "$*"
}
die() { say "ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, runs the daemons as root)"
[[ $SLURM_FAKE_GPUS =~ ^[0-9]+$ ]] || die "SLURM_FAKE_GPUS must be a number, not '$SLURM_FAKE_GPUS'"

# alive PIDFILE NAME: the pid in PIDFILE is a live process named NAME. `kill -0` is not enough:
# exited daemons stay zombies until PID 1 (not an init here) reaps them, and a pid file may be stale.
alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s
wait_for() {
    local secs=$1 what=$2
    shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.2
    done
    say "$what: ready"
}

# start_daemon NAME COMMAND...: the daemons fork into the background; their stdio goes to a file
# so that a caller reading our output through a pipe (pytest, `| tee` in CI) is not kept waiting
# for EOF by a daemon holding the pipe open. Errors printed before the daemon logs are in it.
start_daemon() {
    local name=$1
    shift
    "$@" </dev/null >"$LOG/$name.stdio" 2>&1 || { cat "$LOG/$name.stdio" >&2; die "$name failed to start"; }
}

# refuse_foreign FILE: never overwrite a config someone else wrote (developer machines)
refuse_foreign() {
    if [ -e "$1" ] && ! grep -qF "$MARKER" "$1" && [ "$SLURM_FORCE_CONF" != 1 ]; then
        die "$1 exists and was not written by this script (SLURM_FORCE_CONF=1 to overwrite)"
    fi
}

# ---------------------------------------------------------------- 1. packages
PKGS=(munge slurmctld slurmd slurm-client)
[ "$SLURM_ACCOUNTING" = 1 ] && PKGS+=(slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    # Debian ships init.d scripts for munge, mariadb and slurm*: without a policy-rc.d the postinst
    # would start a system MariaDB on 3306 and a system munged. Docker-style images have one already.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    fi
    apt_log=$(mktemp /tmp/start-local-slurm-apt.XXXXXX)
    # the lock timeout: CI images often run apt (unattended-upgrades) at boot
    apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -qq "$@"; }
    if ! { apt_get update && apt_get install --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "apt-get install failed (full log: $apt_log)"
    fi
    rm -f "$apt_log"
    say "installed $(slurmd -V)"
fi

mkdir -p "$RUN" "$LOG" "$SLURM_LAB/state/slurmctld" "$SLURM_LAB/state/slurmd" "$CONF_DIR"
chmod 755 "$SLURM_LAB" # the munge and mysql users must be able to traverse it

# ---------------------------------------------------------------- 2. munge
if alive "$RUN/munged.pid" munged; then
    say "munged: already running"
elif munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    # no pid file of ours: stop-local-slurm.sh will leave this munged alone
    say "munged: using a munged not started by this script"
else
    if [ ! -s /etc/munge/munge.key ]; then # the munge postinst normally creates it
        install -d -o munge -g munge -m 700 /etc/munge
        runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
    # /run/munge is systemd's RuntimeDirectory for munge: without systemd nobody creates it
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock # left by a killed munged
    start_daemon munged runuser -u munge -- /usr/sbin/munged
    wait_for 10 munged sh -c 'munge -n | unmunge' || die "munged did not start (see /var/log/munge/munged.log)"
    cp /run/munge/munged.pid "$RUN/munged.pid" # our ownership record for stop-local-slurm.sh
fi

# ---------------------------------------------------------------- 3. accounting: MariaDB + slurmdbd.conf
if [ "$SLURM_ACCOUNTING" = 1 ]; then
    install -d -o mysql -g mysql -m 750 "$MYSQL_DIR"
    install -d -o mysql -g mysql -m 755 "$MYSQL_RUN"
    if alive "$MYSQL_RUN/mariadbd.pid" mariadbd; then
        say "mariadbd: already running"
    else
        if [ ! -d "$MYSQL_DIR/mysql" ]; then
            mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DIR" \
                --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
                || { cat "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
            say "mariadb: initialised $MYSQL_DIR"
        fi
        if (: <"/dev/tcp/127.0.0.1/$SLURM_MYSQL_PORT") 2>/dev/null; then
            die "port $SLURM_MYSQL_PORT is taken by another process; set SLURM_MYSQL_PORT"
        fi
        # without a pre-created log file owned by mysql, mariadbd logs nothing
        touch "$LOG/mariadbd.log" && chown mysql:mysql "$LOG/mariadbd.log"
        # --no-defaults: ignore /etc/mysql; loopback only; small buffer pool (slurmdbd then logs a
        # harmless "Database settings not recommended values: innodb_buffer_pool_size");
        # innodb_lock_wait_timeout=900 is what slurmdbd asks for.
        setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DIR" \
            --socket="$MYSQL_SOCK" --pid-file="$MYSQL_RUN/mariadbd.pid" \
            --bind-address=127.0.0.1 --port="$SLURM_MYSQL_PORT" --skip-name-resolve \
            --log-error="$LOG/mariadbd.log" --innodb-buffer-pool-size=128M \
            --innodb-lock-wait-timeout=900 --performance-schema=OFF \
            </dev/null >/dev/null 2>&1 &
        wait_for 60 mariadbd mariadb --socket="$MYSQL_SOCK" -e 'SELECT 1' \
            || { tail -n 20 "$LOG/mariadbd.log" >&2; die "mariadbd did not start"; }
    fi
    # mariadbd writes its pid file where it wants it; the link is what stop-local-slurm.sh reads
    ln -sf "$MYSQL_RUN/mariadbd.pid" "$RUN/mariadbd.pid"
    mariadb --socket="$MYSQL_SOCK" <<SQL
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
SQL

    refuse_foreign "$CONF_DIR/slurmdbd.conf"
    # slurmdbd refuses a slurmdbd.conf that is not owned by SlurmUser (root) with mode 600
    (
        umask 077
        cat >"$CONF_DIR/slurmdbd.conf" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$SLURM_MYSQL_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
    )
    chown root:root "$CONF_DIR/slurmdbd.conf"
    ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
else
    ACCT="AccountingStorageType=accounting_storage/none"
fi

# ---------------------------------------------------------------- 4. slurm.conf, gres.conf
refuse_foreign "$CONF_DIR/slurm.conf"
refuse_foreign "$CONF_DIR/gres.conf"

# Hardware as slurmd itself sees it: a RealMemory above what slurmd detects drains the node
# ("Low RealMemory"), and copying the socket layout avoids "Node reconfigured socket/core boundaries".
HW=$(slurmd -C | head -n 1)
hw() { tr ' ' '\n' <<<"$HW" | sed -n "s/^$1=//p"; }
CPUS=$(hw CPUs) SOCKETS=$(hw SocketsPerBoard) CORES=$(hw CoresPerSocket) THREADS=$(hw ThreadsPerCore)
MEM=$(hw RealMemory)
# Without DefMemPerCPU a job without --mem takes the whole node's memory and jobs run one at a time.
DEFMEM=$((MEM / CPUS))

# Bind the daemons to 127.0.0.1 instead of 0.0.0.0, but only if the hostname resolves to loopback:
# with NoInAddrAny slurmd/srun bind to the address of `hostname`, and if that were a LAN address
# slurmctld (which talks to NodeAddr=127.0.0.1) could not reach them.
COMM=""
if getent ahostsv4 "$(hostname)" 2>/dev/null | awk '{print $1}' | head -n 1 | grep -q '^127\.'; then
    COMM="CommunicationParameters=NoCtldInAddrAny,NoInAddrAny"
fi

GRES_TYPES="" GRES_NODE="" NEW_GRES=""
EXPECT_GRES="(null)" # what sinfo's %G shows for the node once the config is live
if [ "$SLURM_FAKE_GPUS" -gt 0 ]; then
    # slurmd counts a gpu GRES only if its File is a character or block device: without File the
    # count is 0 and the node goes INVAL ("gres/gpu count reported lower than configured"), a plain
    # file is "not a valid character or block device". So: /dev/null clones (char 1,3).
    mkdir -p "$SLURM_LAB/fakegpu"
    for ((i = 0; i < SLURM_FAKE_GPUS; i++)); do
        [ -c "$SLURM_LAB/fakegpu/nvidia$i" ] || mknod "$SLURM_LAB/fakegpu/nvidia$i" c 1 3
    done
    GRES_TYPES="GresTypes=gpu
AccountingStorageTRES=gres/gpu"
    GRES_NODE="Gres=gpu:$SLURM_FAKE_GPUS"
    EXPECT_GRES="gpu:$SLURM_FAKE_GPUS"
    NEW_GRES="$MARKER
NodeName=$NODE Name=gpu File=$SLURM_LAB/fakegpu/nvidia[0-$((SLURM_FAKE_GPUS - 1))]"
fi

NEW_CONF=$(
    cat <<EOF
$MARKER
# Single-node Slurm on localhost for tests. State, logs and pid files: $SLURM_LAB
ClusterName=$SLURM_CLUSTER
# "localhost" is accepted as the controller name whatever the real hostname is
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
# everything runs as root: no slurm user, no chown of spool/state dirs
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire (default 120 s) is also how long a REQUEUED job must wait before it may start
# again; 10 s makes scontrol requeue / submitit checkpoint-requeue take ~12 s, not ~140 s
AuthInfo=cred_expire=10
StateSaveLocation=$SLURM_LAB/state/slurmctld
SlurmdSpoolDir=$SLURM_LAB/state/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# no cgroups and no systemd needed, so it works in any container: linuxproc follows the process
# tree, task/none binds nothing (a --cpus-per-task=1 job still sees every CPU; memory is
# accounted by jobacct_gather/linux but not enforced)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
$ACCT
$COMM
MpiDefault=none
SwitchType=switch/none
# no mail program installed; the default /bin/mail does not exist
MailProg=/bin/true
SchedulerType=sched/backfill
# batch_sched_delay=0: start queued jobs as soon as a CPU frees up (default: a 3 s lag per wave of
# array tasks); sched_interval/bf_interval 5 s: requeued / --begin jobs start within seconds, not 30-60 s
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEFMEM
# reject impossible requests at submit time (default: they pend forever, Reason=PartitionConfig)
EnforcePartLimits=ALL
# a node that was DOWN comes back by itself when slurmd registers again
ReturnToService=2
# batch jobs may be requeued (scontrol requeue, --signal + self-requeue, submitit preemption)
JobRequeue=1
$GRES_TYPES
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=$SLURM_PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
CONF_CHANGED=0
if [ "$(cat "$CONF_DIR/slurm.conf" 2>/dev/null)" != "$NEW_CONF" ]; then
    printf '%s\n' "$NEW_CONF" >"$CONF_DIR/slurm.conf"
    chmod 644 "$CONF_DIR/slurm.conf"
    CONF_CHANGED=1
fi
if [ "$(cat "$CONF_DIR/gres.conf" 2>/dev/null)" != "$NEW_GRES" ]; then
    if [ -n "$NEW_GRES" ]; then printf '%s\n' "$NEW_GRES" >"$CONF_DIR/gres.conf"; else rm -f "$CONF_DIR/gres.conf"; fi
    CONF_CHANGED=1
fi
# slurmctld refuses to start if StateSaveLocation belongs to another ClusterName
state_cluster=$(cat "$SLURM_LAB/state/slurmctld/clustername" 2>/dev/null || true)
if [ -n "$state_cluster" ] && [ "$state_cluster" != "$SLURM_CLUSTER" ]; then
    die "$SLURM_LAB/state/slurmctld belongs to cluster '$state_cluster'; run stop-local-slurm.sh --purge"
fi

# ---------------------------------------------------------------- 5. daemons
if [ "$SLURM_ACCOUNTING" = 1 ]; then
    if alive "$RUN/slurmdbd.pid" slurmdbd; then
        say "slurmdbd: already running"
    else
        start_daemon slurmdbd slurmdbd
        wait_for 30 slurmdbd sacctmgr -n show cluster \
            || { tail -n 20 "$LOG/slurmdbd.log" >&2; die "slurmdbd not answering"; }
    fi
    # slurmctld would register the cluster itself, but adding it first makes sacct consistent from
    # the very first job. `sacctmgr add cluster` fails if it exists, hence the check.
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$SLURM_CLUSTER"; then
        sacctmgr -i add cluster "$SLURM_CLUSTER" >/dev/null
        say "registered cluster $SLURM_CLUSTER in slurmdbd"
    fi
fi

# A changed config (the fake GPUs) needs both daemons restarted: after `scontrol reconfigure` that
# adds GresTypes=gpu, sinfo shows gpu:2 but `--gres=gpu:1` fails with "Requested node configuration
# is not available" (measured). `scontrol shutdown` saves slurmctld's state first (never kill -9 it:
# jobs submitted since its last periodic save would be lost). Running jobs survive (slurmstepd).
daemons_gone() { ! alive "$RUN/slurmctld.pid" slurmctld && ! alive "$RUN/slurmd.pid" slurmd; }
if [ "$CONF_CHANGED" = 1 ] && ! daemons_gone; then
    say "config changed: restarting slurmctld and slurmd"
    if alive "$RUN/slurmctld.pid" slurmctld; then scontrol shutdown; else kill -TERM "$(cat "$RUN/slurmd.pid")"; fi
    wait_for 30 "old slurmctld and slurmd gone" daemons_gone || die "slurmctld/slurmd did not shut down"
fi

if alive "$RUN/slurmctld.pid" slurmctld; then
    say "slurmctld: already running"
else
    start_daemon slurmctld slurmctld
    wait_for 30 slurmctld scontrol ping || { tail -n 20 "$LOG/slurmctld.log" >&2; die "slurmctld not answering"; }
fi

if alive "$RUN/slurmd.pid" slurmd; then
    say "slurmd: already running"
else
    start_daemon slurmd slurmd -N "$NODE"
fi

node_ready() {
    local state gres
    read -r state gres < <(sinfo -h -N -n "$NODE" -o '%t %G')
    [[ $state =~ ^(idle|mix|alloc)$ ]] && [ "$gres" = "$EXPECT_GRES" ]
}
if ! wait_for 60 "node $NODE idle, gres $EXPECT_GRES" node_ready; then
    # e.g. DOWN/DRAIN left over in the saved state: try once to resume it
    scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
    wait_for 20 "node $NODE idle after resume" node_ready || {
        sinfo -N -l >&2
        tail -n 20 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2
        die "node did not become idle with gres $EXPECT_GRES"
    }
fi
sinfo -o '%P %a %D %t %c %m %G'
say "local Slurm cluster '$SLURM_CLUSTER' is up (accounting=$SLURM_ACCOUNTING fake_gpus=$SLURM_FAKE_GPUS)"
