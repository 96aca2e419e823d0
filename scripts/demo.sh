#!/usr/bin/env bash
# The main job: install, start a one-node cluster, ingest the sample corpus,
# ask a question and print the answer with its cited sources.
#   MESHRAG_DEMO_PORT=7070 scripts/demo.sh ["your question"]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PORT=${MESHRAG_DEMO_PORT:-7070}
DATA=${MESHRAG_DEMO_DATA:-./meshrag-data}
NODE="http://127.0.0.1:$PORT"
QUESTION=${1:-$(head -n 1 samples/questions.txt)}
MESHRAG=.venv/bin/meshrag

echo "[demo] starting a node on 127.0.0.1:$PORT (data in $DATA, log in $DATA/node.log)"
mkdir -p "$DATA"
$MESHRAG start --bind "127.0.0.1:$PORT" --data-dir "$DATA" --dev --name demo >"$DATA/node.log" 2>&1 &
NODE_PID=$!
trap 'kill -TERM $NODE_PID 2>/dev/null; wait $NODE_PID 2>/dev/null || true' EXIT

echo "[demo] waiting for the models to load"
for _ in $(seq 1 180); do
  if curl -fsS "$NODE/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 $NODE_PID 2>/dev/null; then echo "[demo] node exited; see $DATA/node.log" >&2; tail -n 20 "$DATA/node.log" >&2; exit 1; fi
  sleep 1
done
curl -fsS "$NODE/ready" >/dev/null || { echo "[demo] node not ready after 180 s; see $DATA/node.log" >&2; exit 1; }

$MESHRAG status --node "$NODE"
echo
$MESHRAG ingest samples/corpus --node "$NODE"
echo
echo "[demo] Q: $QUESTION"
echo -n "[demo] A: "
$MESHRAG ask "$QUESTION" --node "$NODE"
