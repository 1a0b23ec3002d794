#!/usr/bin/env bash
# Start the Flower SuperLink of an lmeraser federation in the foreground.
#
# The SuperLink uses TLS on every API, accepts only SuperNode keys registered through
# 'lmeraser owner enrol', keeps its state in a database file and installs no app dependencies at
# run time. The script execs flower-superlink, so its PID is the SuperLink's.
#
# Environment:
#   LMERASER_FLEET_ADDRESS   Fleet API host:port for owners' SuperNodes (default 127.0.0.1:9092)
#   LMERASER_CONTROL_HOST    host of the Control/Runtime API for flwr and the ServerApp (default 127.0.0.1)
#   LMERASER_CONTROL_PORT    port of the Control/Runtime API (default 9093)
set -euo pipefail

usage() {
    cat <<EOF
usage: $(basename "$0") CERTS_DIR [STATE_DIR]

Start flower-superlink with the CA certificate, server certificate and key in CERTS_DIR
(ca.crt, server.pem, server.key, as written by deploy/make_certs.py) and its database at
STATE_DIR/superlink.db (default: the current directory).

Environment: LMERASER_FLEET_ADDRESS (default 127.0.0.1:9092), LMERASER_CONTROL_HOST
(default 127.0.0.1), LMERASER_CONTROL_PORT (default 9093).
EOF
}

if [[ $# -lt 1 || $# -gt 2 || $1 == -h || $1 == --help ]]; then
    usage >&2
    exit 2
fi

certs_dir=$1
state_dir=${2:-.}
fleet_address=${LMERASER_FLEET_ADDRESS:-127.0.0.1:9092}
control_host=${LMERASER_CONTROL_HOST:-127.0.0.1}
control_port=${LMERASER_CONTROL_PORT:-9093}

if [[ ! -d $certs_dir ]]; then
    echo "error: certificate folder '$certs_dir' not found; create it with" \
         "'python deploy/make_certs.py --out $certs_dir --dns HOSTNAME --ip ADDRESS'" >&2
    exit 1
fi
for name in ca.crt server.pem server.key; do
    if [[ ! -r $certs_dir/$name ]]; then
        echo "error: '$certs_dir/$name' is missing or unreadable; deploy/make_certs.py writes ca.crt," \
             "server.pem and server.key into the folder given as --out" >&2
        exit 1
    fi
done
if [[ ! $control_port =~ ^[0-9]+$ ]]; then
    echo "error: invalid LMERASER_CONTROL_PORT '$control_port'; expected a port number such as 9093" >&2
    exit 1
fi
if [[ $fleet_address != *:* ]]; then
    echo "error: invalid LMERASER_FLEET_ADDRESS '$fleet_address'; expected host:port such as 127.0.0.1:9092" >&2
    exit 1
fi
mkdir -p "$state_dir"

# The SuperLink starts each job's ServerApp (flower-superexec, then flwr-serverapp) from PATH,
# and the ServerApp imports lmeraser, so the repository's virtual environment goes first when
# there is one.
repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -x $repo_dir/.venv/bin/flower-superlink ]]; then
    PATH="$repo_dir/.venv/bin:$PATH"
fi
if ! command -v flower-superlink >/dev/null; then
    echo "error: flower-superlink not found on PATH; install lmeraser ('make install' in the repository," \
         "or 'pip install .') and activate its environment" >&2
    exit 1
fi

export PATH
export FLWR_DISABLE_UPDATE_CHECK=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

exec flower-superlink \
    --ssl-ca-certfile "$certs_dir/ca.crt" \
    --ssl-certfile "$certs_dir/server.pem" \
    --ssl-keyfile "$certs_dir/server.key" \
    --enable-supernode-auth \
    --database "$state_dir/superlink.db" \
    --fleet-api-type grpc-rere \
    --fleet-api-address "$fleet_address" \
    --host "$control_host" \
    --port "$control_port" \
    --disable-runtime-dependency-installation
