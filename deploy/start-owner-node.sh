#!/usr/bin/env bash
# Start a data owner's Flower SuperNode for an lmeraser federation in the foreground.
#
# The SuperNode connects to the SuperLink's Fleet API over TLS, authenticates with the owner's
# node key (registered by 'lmeraser owner enrol'), and runs lmeraser's ClientApp over the owner's
# images. The script execs flower-supernode, so its PID is the SuperNode's.
#
# Environment:
#   LMERASER_SUPERLINK             Fleet API host:port of the SuperLink (default 127.0.0.1:9092)
#   LMERASER_NODE_PORT             port of this SuperNode's local Runtime API (default 9094).
#                                  Each SuperNode on one machine needs its own port.
#   LMERASER_BACKBONE_CHECKPOINT   optional local copy of the backbone weights (a state dict file)
set -euo pipefail

usage() {
    cat <<EOF
usage: $(basename "$0") OWNER_ID DATA_DIR NODE_KEY CA_CERT

  OWNER_ID   the owner id used with 'lmeraser owner enrol --owner', for example hospital-a
  DATA_DIR   the owner's images in ImageFolder layout: one sub-folder per class, named as in
             the server's --classes (or a folder holding such a train/ tree)
  NODE_KEY   the owner's private SuperNode key ('lmeraser owner keygen --node-key'), not the .pub
  CA_CERT    the federation's CA certificate (ca.crt from the operator)

Environment: LMERASER_SUPERLINK (default 127.0.0.1:9092), LMERASER_NODE_PORT (default 9094),
LMERASER_BACKBONE_CHECKPOINT (optional).
EOF
}

if [[ $# -ne 4 ]]; then
    usage >&2
    exit 2
fi

owner_id=$1
data_dir=$2
node_key=$3
ca_cert=$4
superlink=${LMERASER_SUPERLINK:-127.0.0.1:9092}
node_port=${LMERASER_NODE_PORT:-9094}
checkpoint=${LMERASER_BACKBONE_CHECKPOINT:-}

fail() {
    echo "error: $*" >&2
    exit 1
}

# Owner ids follow lmeraser's rule: letters, digits, '.', '_' and '-', at most 64 characters.
if [[ ! $owner_id =~ ^[A-Za-z0-9._-]{1,64}$ ]]; then
    fail "invalid owner id '$owner_id'; use letters, digits, '.', '_' and '-' (at most 64 characters)"
fi
if [[ ! -d $data_dir ]]; then
    fail "data folder '$data_dir' not found; pass the folder that holds one sub-folder of images per class"
fi
if [[ -z $(find "$data_dir" -mindepth 1 -maxdepth 1 -type d -print -quit) ]]; then
    fail "data folder '$data_dir' has no class sub-folders; put each class's images in a sub-folder named" \
         "after the class (for example $data_dir/0/, $data_dir/1/, ...)"
fi
if [[ $node_key == *.pub ]]; then
    fail "node key '$node_key' is a public key; pass the private key file (the path without .pub)"
fi
if [[ ! -f $node_key ]]; then
    fail "node key '$node_key' not found; create it with 'lmeraser owner keygen --key owner.key --node-key node.key'"
fi
if [[ ! -r $node_key ]]; then
    fail "node key '$node_key' is not readable by this user; check its owner (it should have mode 0600)"
fi
if [[ ! -f $ca_cert ]]; then
    fail "CA certificate '$ca_cert' not found; get ca.crt from the federation's operator"
fi
if [[ -n $checkpoint && ! -f $checkpoint ]]; then
    fail "LMERASER_BACKBONE_CHECKPOINT '$checkpoint' not found; unset it to use the job's backbone weights"
fi
if [[ ! $node_port =~ ^[0-9]+$ ]]; then
    fail "invalid LMERASER_NODE_PORT '$node_port'; expected a port number such as 9094"
fi
if [[ $superlink != *:* ]]; then
    fail "invalid LMERASER_SUPERLINK '$superlink'; expected host:port such as 127.0.0.1:9092"
fi

# Flower runs the ClientApp in a separate process, so the node config carries absolute paths.
data_dir=$(cd "$data_dir" && pwd)
if [[ -n $checkpoint ]]; then
    checkpoint=$(cd "$(dirname "$checkpoint")" && pwd)/$(basename "$checkpoint")
fi
# Flower parses --node-config values as TOML basic strings, where '"' and '\' would need escaping.
for value in "$data_dir" "$checkpoint"; do
    if [[ $value == *[\"\\]* ]]; then
        fail "path '$value' contains '\"' or '\\', which the node config cannot carry; move or link the folder"
    fi
done
node_config="owner-id=\"$owner_id\" data-dir=\"$data_dir\""
if [[ -n $checkpoint ]]; then
    node_config+=" backbone-checkpoint=\"$checkpoint\""
fi

# The SuperNode starts each ClientApp (flower-superexec, then flwr-clientapp) from PATH, and the
# ClientApp imports lmeraser, so the repository's virtual environment goes first when there is one.
repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -x $repo_dir/.venv/bin/flower-supernode ]]; then
    PATH="$repo_dir/.venv/bin:$PATH"
fi
if ! command -v flower-supernode >/dev/null; then
    fail "flower-supernode not found on PATH; install lmeraser ('make install' in the repository, or" \
         "'pip install .') and activate its environment"
fi

export PATH
export FLWR_DISABLE_UPDATE_CHECK=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

exec flower-supernode \
    --superlink "$superlink" \
    --root-certificates "$ca_cert" \
    --auth-supernode-private-key "$node_key" \
    --node-config "$node_config" \
    --port "$node_port"
