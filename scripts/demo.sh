#!/usr/bin/env bash
# The main job: install, start a local 3-node cluster (each document on 2 of
# them), ingest the sample corpus through one node, ask a question through
# another and print the answer with its cited sources.
#   MESHRAG_DEMO_PORT=7070 scripts/demo.sh ["your question"]
# Nodes listen on 127.0.0.1:PORT, PORT+1 and PORT+2; n1 also generates
# (llama.cpp), n2 and n3 store and coordinate. Data and logs: $MESHRAG_DEMO_DATA/n*/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PORT=${MESHRAG_DEMO_PORT:-7070}
DATA=${MESHRAG_DEMO_DATA:-./meshrag-data}
QUESTION=${1:-$(head -n 1 samples/questions.txt)}
MESHRAG=.venv/bin/meshrag
PIDS=()
trap 'for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

url() { echo "http://127.0.0.1:$((PORT + $1 - 1))"; }

start_node() {  # start_node INDEX ROLES [JOIN]
  local index=$1 roles=$2 dir="$DATA/n$1" join=()
  [ $# -ge 3 ] && join=(--join "$3")
  mkdir -p "$dir"
  $MESHRAG start --name "n$index" --bind "127.0.0.1:$((PORT + index - 1))" --data-dir "$dir" --dev \
    --roles "$roles" --partitions 16 --replicas 2 "${join[@]}" >"$dir/node.log" 2>&1 &
  PIDS+=($!)
}

wait_ready() {  # wait_ready INDEX
  local index=$1 pid=${PIDS[$(($1 - 1))]}
  for _ in $(seq 1 240); do
    if curl -fsS "$(url "$index")/ready" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "[demo] n$index exited; see $DATA/n$index/node.log" >&2; tail -n 20 "$DATA/n$index/node.log" >&2; exit 1
    fi
    sleep 1
  done
  echo "[demo] n$index not ready after 240 s; see $DATA/n$index/node.log" >&2; exit 1
}

ring_settled() {  # every node sees 3 ring members, all normal
  for index in 1 2 3; do
    $MESHRAG status --json --node "$(url "$index")" 2>/dev/null | .venv/bin/python -c '
import json, sys
nodes = json.load(sys.stdin)["ring"]["nodes"]
sys.exit(0 if len(nodes) == 3 and all(n["status"] == "normal" for n in nodes) else 1)' || return 1
  done
}

echo "[demo] starting n1 (storage, coordinator, generator) on $(url 1), data in $DATA"
start_node 1 storage,coordinator,generator
wait_ready 1
echo "[demo] starting n2 and n3 (storage, coordinator), joining through n1"
start_node 2 storage,coordinator "127.0.0.1:$PORT"
start_node 3 storage,coordinator "127.0.0.1:$PORT"
wait_ready 2
wait_ready 3
for _ in $(seq 1 120); do ring_settled && break; sleep 1; done
ring_settled || { echo "[demo] the ring did not settle in 120 s; see $DATA/n*/node.log" >&2; exit 1; }

echo "[demo] ingesting samples/corpus through n2"
$MESHRAG ingest samples/corpus --node "$(url 2)"
echo
$MESHRAG status --node "$(url 1)"
echo
echo "[demo] Q: $QUESTION"
echo -n "[demo] A: "
$MESHRAG ask "$QUESTION" --node "$(url 1)"
