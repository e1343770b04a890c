#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432, user postgres, trust auth) and RabbitMQ
# (127.0.0.1:5672, guest/guest) answer, for the tests, the benchmarks and `make run`.
#
# For each service: if its port answers, nothing is done. Otherwise the installed service is
# started with the machine's own commands; on a fresh Debian it is first installed with
# apt-get (and PostgreSQL is set to trust auth on loopback). Prints one line per service.
# Idempotent; well under a second when both already run.
set -euo pipefail

# The same variables as tests/support.py.
PG_HOST=${TEST_PG_HOST:-127.0.0.1}
PG_PORT=${TEST_PG_PORT:-5432}
AMQP_HOST=${TEST_AMQP_HOST:-127.0.0.1}
AMQP_PORT=${TEST_AMQP_PORT:-5672}
RABBITMQ_DEADLINE=60
POSTGRES_DEADLINE=30
LOG="${TMPDIR:-/tmp}/campaign-live-services.log"
HBA_MARKER="# campaign-live (scripts/services.sh): trust on loopback for development and tests"

die() {
    echo "services.sh: ERROR: $*" >&2
    exit 1
}

# True when something accepts TCP connections on host:port (1 s at most).
port_open() {
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# Wait until host:port answers, up to a deadline in seconds.
wait_port() {
    local host=$1 port=$2 deadline=$((SECONDS + $3))
    until port_open "$host" "$port"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# Stop with a clear message unless we can act as root (directly or with passwordless sudo).
need_root() {
    [[ $EUID -eq 0 ]] && return 0
    command -v sudo >/dev/null && sudo -n true 2>/dev/null && return 0
    die "$1 (needs root: run this script as root, or start the service yourself)"
}

# Run a command as root (need_root has checked that we can).
as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}

# Run a command with its output in $LOG; on failure show the end of the log and stop.
logged() {
    echo "\$ $*" >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        die "'$*' failed (full output in $LOG)"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "$* not installed and apt-get is not available: install it yourself"
    # C.UTF-8 always exists on Debian; an unset or ungenerated locale breaks pg_createcluster.
    export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8
    if [[ $APT_UPDATED -eq 0 ]]; then
        logged as_root apt-get update -q
        APT_UPDATED=1
    fi
    logged as_root apt-get install -y -q --no-install-recommends "$@"
}

# PostgreSQL ---------------------------------------------------------------------------

# "<version> <cluster>" of the cluster on $PG_PORT (else the first one), or nothing.
pg_cluster() {
    local line
    line=$(pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port {print $1, $2; exit}' || true)
    if [[ -z $line && -d /etc/postgresql ]]; then
        local version
        version=$(ls /etc/postgresql | head -1 || true)
        [[ -n $version && -d /etc/postgresql/$version/main ]] && line="$version main"
    fi
    echo "$line"
}

# Put trust rules for loopback first in a pg_hba.conf (first match wins); idempotent.
pg_trust_loopback() {
    local hba=$1
    grep -qF "$HBA_MARKER" "$hba" && return 0
    local tmp
    tmp=$(mktemp)
    {
        echo "$HBA_MARKER"
        echo "local   all   all                  trust"
        echo "host    all   all   127.0.0.1/32   trust"
        echo "host    all   all   ::1/128        trust"
        echo
        cat "$hba"
    } >"$tmp"
    as_root cp "$tmp" "$hba"
    rm -f "$tmp"
}

ensure_postgres() {
    local version cluster did=""
    if port_open "$PG_HOST" "$PG_PORT"; then
        echo "PostgreSQL: already answering on $PG_HOST:$PG_PORT"
        return
    fi
    need_root "PostgreSQL does not answer on $PG_HOST:$PG_PORT"
    if ! command -v pg_ctlcluster >/dev/null || [[ -z $(pg_cluster) ]]; then
        apt_install postgresql
        if [[ -z $(pg_cluster) ]]; then
            # postgresql-common normally creates "main" itself; do it if it was configured not to.
            version=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1)
            [[ -n $version ]] || die "PostgreSQL installed but no server version found in /usr/lib/postgresql"
            logged as_root pg_createcluster "$version" main
        fi
        read -r version cluster <<<"$(pg_cluster)"
        pg_trust_loopback "/etc/postgresql/$version/$cluster/pg_hba.conf"
        did="installed with apt-get, set trust auth on loopback, "
    fi
    read -r version cluster <<<"$(pg_cluster)"
    [[ -n $version ]] || die "no PostgreSQL cluster found (pg_lsclusters shows none)"
    local action=start
    if as_root pg_ctlcluster "$version" "$cluster" status >/dev/null 2>&1; then
        # Already running (a package install may start it, or it is still starting): a reload
        # applies the new pg_hba.conf without taking it from its service manager.
        action=reload
    fi
    logged as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" "$action"
    wait_port "$PG_HOST" "$PG_PORT" "$POSTGRES_DEADLINE" ||
        die "PostgreSQL cluster $version/$cluster is up but $PG_HOST:$PG_PORT does not answer" \
            "after ${POSTGRES_DEADLINE}s (see /var/log/postgresql/postgresql-$version-$cluster.log)"
    # The tests connect as postgres without a password.
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -w -d postgres -Atqc 'SELECT 1' >>"$LOG" 2>&1 ||
        die "PostgreSQL answers but refuses user postgres without a password; put these lines first" \
            "in /etc/postgresql/$version/$cluster/pg_hba.conf and reload:" \
            $'\n  local all all trust\n  host all all 127.0.0.1/32 trust\n  host all all ::1/128 trust'
    [[ $action == start ]] && action=started || action=reloaded
    echo "PostgreSQL: ${did}${action} cluster $version/$cluster, answering on $PG_HOST:$PG_PORT"
}

# RabbitMQ -----------------------------------------------------------------------------

# The tests create a vhost per module with rabbitmqctl; Debian's wrapper only runs it for
# root or the rabbitmq user.
check_rabbitmqctl() {
    command -v rabbitmqctl >/dev/null ||
        die "RabbitMQ answers on $AMQP_HOST:$AMQP_PORT but rabbitmqctl is not installed; the tests need it"
    if [[ $EUID -ne 0 && $(id -un) != rabbitmq ]]; then
        echo "services.sh: warning: rabbitmqctl only works as root or rabbitmq; run the tests as root" >&2
    fi
}

# True while a RabbitMQ node process runs (started, or still booting). Reads /proc: a fresh
# Debian has no pgrep. The bracket keeps this grep from matching its own command line.
rabbit_node_running() {
    grep -qsa '[-]s.rabbit.boot' /proc/[0-9]*/cmdline
}

ensure_rabbitmq() {
    if port_open "$AMQP_HOST" "$AMQP_PORT"; then
        check_rabbitmqctl
        echo "RabbitMQ: already answering on $AMQP_HOST:$AMQP_PORT"
        return
    fi
    local did="" action=started
    need_root "RabbitMQ does not answer on $AMQP_HOST:$AMQP_PORT"
    if ! command -v rabbitmq-server >/dev/null; then
        apt_install rabbitmq-server
        did="installed with apt-get, "
        # A node named after localhost does not depend on the container's hostname resolving;
        # only set it before the first start (the package may have started a node already).
        if ! rabbit_node_running && ! grep -qs '^NODENAME=' /etc/rabbitmq/rabbitmq-env.conf; then
            echo "NODENAME=rabbit@localhost" | as_root tee -a /etc/rabbitmq/rabbitmq-env.conf >/dev/null
        fi
    fi
    if rabbit_node_running; then
        action="waited for the booting node"
    else
        logged as_root rabbitmq-server -detached
    fi
    wait_port "$AMQP_HOST" "$AMQP_PORT" "$RABBITMQ_DEADLINE" ||
        die "RabbitMQ was started but $AMQP_HOST:$AMQP_PORT does not answer after ${RABBITMQ_DEADLINE}s" \
            "(see /var/log/rabbitmq/)"
    check_rabbitmqctl
    as_root rabbitmqctl -q await_startup >>"$LOG" 2>&1 ||
        die "RabbitMQ answers but 'rabbitmqctl await_startup' fails (Erlang cookie or node name?); see $LOG"
    echo "RabbitMQ: ${did}${action}, answering on $AMQP_HOST:$AMQP_PORT"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    ensure_postgres
    ensure_rabbitmq
fi
