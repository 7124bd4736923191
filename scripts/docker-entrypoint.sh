#!/bin/sh
# Initialise the node's data directory on first start, then hand over to nymstr-node.
set -eu
DIR=${NYMSTR_DIR:-/data}
if [ ! -f "$DIR/config.toml" ]; then
  nymstr-node init --dir "$DIR" --listen "${NYMSTR_LISTEN:-0.0.0.0:7000}"
fi
case "${1:-run}" in
  run) exec nymstr-node run --dir "$DIR" --log-format "${NYMSTR_LOG_FORMAT:-json}" ;;
  info) exec nymstr-node info --dir "$DIR" ;;
  *) exec "$@" ;;
esac
