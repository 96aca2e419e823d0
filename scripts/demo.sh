#!/usr/bin/env bash
# The main job: install, start a local 3-node cluster (each document on 2 of
# them), ingest the sample corpus through n2, ask a question through n3 (which
# does not generate: it retrieves, then streams the answer from n1's generator)
# and print the answer with its cited sources.
#   MESHRAG_DEMO_PORT=7070 scripts/demo.sh ["your question"]
# Nodes listen on 127.0.0.1:PORT, PORT+1 and PORT+2; n1 also generates
# (llama.cpp), n2 and n3 store and coordinate. Data and logs: $MESHRAG_DEMO_DATA/n*/.
# The nodes stop when the script ends.
#
#   scripts/demo.sh big ["your question"]   5 nodes, 2 of them generators (n1, n2), left running in
#                                           the background (pid files $MESHRAG_DEMO_DATA/n*/node.pid);
#                                           asks through n3, which does not generate
#   scripts/demo.sh down [--wipe]           stop the demo's nodes (SIGTERM, then SIGKILL after 30 s),
#                                           found by their pid files or their --data-dir; --wipe also
#                                           deletes their data directories ($MESHRAG_DEMO_DATA/n<K>)
# MESHRAG_DEMO_NODES and MESHRAG_DEMO_GENERATORS set the size of `big` (default 5 and 2).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${MESHRAG_DEMO_PORT:-7070}
DATA=${MESHRAG_DEMO_DATA:-./meshrag-data}
MESHRAG=.venv/bin/meshrag
STOP_WAIT_S=30

MODE=demo
case "${1:-}" in
  big) MODE=big; shift ;;
  down) MODE=down; shift ;;
esac

# ------------------------------------------------------------------ finding and stopping nodes
node_dirs() {  # the demo's node directories: $DATA/n<K>
  local dir
  for dir in "$DATA"/n*; do
    case "${dir##*/}" in n|n*[!0-9]*) continue ;; esac
    [ -d "$dir" ] && printf '%s\n' "$dir"
  done
  return 0
}

pids_of() {  # pids_of DIR: the `meshrag start` processes serving DIR (pid file first, else by --data-dir)
  local dir=$1 pid args
  if [ -f "$dir/node.pid" ]; then
    pid=$(head -c 32 "$dir/node.pid" | tr -cd '0-9')
    if [ -n "$pid" ] && args=$(ps -o args= -p "$pid" 2>/dev/null) && [[ "$args" == *"meshrag start"*"--data-dir $dir "* ]]; then
      echo "$pid"
      return 0
    fi
  fi
  # No pid file, or a stale one: a node started by hand with this --data-dir.
  ps -eo pid=,args= 2>/dev/null | while read -r pid args; do
    [[ "$args" == *"meshrag start"*"--data-dir $dir "* ]] && echo "$pid"
  done
  return 0
}

is_alive() {  # is_alive PID: running (an exited child not yet reaped is not)
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ "$state" != Z* ]]
}

stop_pids() {  # stop_pids PID...: SIGTERM (a graceful leave), SIGKILL whatever is left after STOP_WAIT_S
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  local waited=0 pid alive
  while [ "$waited" -lt $((STOP_WAIT_S * 4)) ]; do
    alive=()
    for pid in "$@"; do is_alive "$pid" && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && return 0
    sleep 0.25
    waited=$((waited + 1))
  done
  echo "[demo] still running after ${STOP_WAIT_S} s, killing: ${alive[*]}" >&2
  kill -KILL "${alive[@]}" 2>/dev/null || true
}

down() {  # down [--wipe]
  local wipe=0 dir pids=() dirs=()
  case "${1:-}" in
    "") ;;
    --wipe) wipe=1 ;;
    *) echo "usage: scripts/demo.sh down [--wipe]" >&2; exit 2 ;;
  esac
  while IFS= read -r dir; do dirs+=("$dir"); done < <(node_dirs)
  for dir in ${dirs[@]+"${dirs[@]}"}; do
    while IFS= read -r pid; do [ -n "$pid" ] && pids+=("$pid") && echo "[demo] stopping ${dir##*/} (pid $pid)"; done < <(pids_of "$dir")
  done
  if [ ${#pids[@]} -eq 0 ]; then echo "[demo] no demo node is running (data: $DATA)"; fi
  stop_pids ${pids[@]+"${pids[@]}"}
  for dir in ${dirs[@]+"${dirs[@]}"}; do rm -f "$dir/node.pid"; done
  if [ "$wipe" -eq 1 ]; then
    for dir in ${dirs[@]+"${dirs[@]}"}; do echo "[demo] deleting $dir"; rm -rf -- "$dir"; done
  fi
  return 0
}

if [ "$MODE" = down ]; then
  down "$@"
  exit 0
fi

# ------------------------------------------------------------------ starting a cluster
if [ "$MODE" = big ]; then
  NODES=${MESHRAG_DEMO_NODES:-5}
  GENERATORS=${MESHRAG_DEMO_GENERATORS:-2}
  ASK_THROUGH=$((GENERATORS + 1))  # the first node that does not generate
  [ "$ASK_THROUGH" -le "$NODES" ] || ASK_THROUGH=$NODES
else
  NODES=3
  GENERATORS=1
  ASK_THROUGH=3  # any node answers: the question goes through n3, which does not generate
fi
case "$NODES$GENERATORS" in *[!0-9]*) echo "[demo] MESHRAG_DEMO_NODES and MESHRAG_DEMO_GENERATORS must be numbers" >&2; exit 2 ;; esac
if [ "$NODES" -lt 2 ] || [ "$NODES" -gt 20 ] || [ "$GENERATORS" -lt 1 ] || [ "$GENERATORS" -gt "$NODES" ]; then
  echo "[demo] need 2..20 nodes and 1..NODES generators (got $NODES nodes, $GENERATORS generators)" >&2; exit 2
fi
QUESTION=${1:-$(head -n 1 samples/questions.txt)}

running=()
while IFS= read -r dir; do
  while IFS= read -r pid; do [ -n "$pid" ] && running+=("${dir##*/} (pid $pid)"); done < <(pids_of "$dir")
done < <(node_dirs)
if [ ${#running[@]} -gt 0 ]; then
  echo "[demo] demo nodes are already running: ${running[*]}; take them down first: scripts/demo.sh down" >&2
  exit 1
fi

scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Client commands are bounded too: a node that hangs must not hang the script.
bounded() { if command -v timeout >/dev/null 2>&1; then timeout "$@"; else shift; "$@"; fi; }
PIDS=()
teardown() {
  stop_pids ${PIDS[@]+"${PIDS[@]}"}
  wait 2>/dev/null || true
  local index
  for index in $(seq 1 "$NODES"); do rm -f "$DATA/n$index/node.pid"; done
}
trap teardown EXIT

url() { echo "http://127.0.0.1:$((PORT + $1 - 1))"; }

start_node() {  # start_node INDEX ROLES [JOIN]
  local index=$1 roles=$2 dir="$DATA/n$1" join=() detach=()
  [ $# -ge 3 ] && join=(--join "$3")
  # big: the nodes outlive this script (their own session, no hangup from the terminal)
  if [ "$MODE" = big ]; then
    if command -v setsid >/dev/null 2>&1; then detach=(setsid); else detach=(nohup); fi
  fi
  mkdir -p "$dir"
  ${detach[@]+"${detach[@]}"} "$MESHRAG" start --name "n$index" --bind "127.0.0.1:$((PORT + index - 1))" --data-dir "$dir" --dev \
    --roles "$roles" --partitions 16 --replicas 2 ${join[@]+"${join[@]}"} >"$dir/node.log" 2>&1 </dev/null &
  PIDS+=($!)
  echo "$!" >"$dir/node.pid"
}

wait_ready() {  # wait_ready INDEX
  local index=$1 pid=${PIDS[$(($1 - 1))]}
  for _ in $(seq 1 240); do
    if curl -fsS --max-time 5 "$(url "$index")/ready" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "[demo] n$index exited; see $DATA/n$index/node.log" >&2; tail -n 20 "$DATA/n$index/node.log" >&2; exit 1
    fi
    sleep 1
  done
  echo "[demo] n$index not ready after 240 s; see $DATA/n$index/node.log" >&2; exit 1
}

ring_settled() {  # every node sees NODES ring members, all normal
  local index
  for index in $(seq 1 "$NODES"); do
    bounded 30 "$MESHRAG" status --json --node "$(url "$index")" 2>/dev/null | .venv/bin/python -c '
import json, sys
nodes = json.load(sys.stdin)["ring"]["nodes"]
sys.exit(0 if len(nodes) == int(sys.argv[1]) and all(n["status"] == "normal" for n in nodes) else 1)' "$NODES" || return 1
  done
}

roles_of() {  # roles_of INDEX: the first GENERATORS nodes also generate
  if [ "$1" -le "$GENERATORS" ]; then echo storage,coordinator,generator; else echo storage,coordinator; fi
}

echo "[demo] starting n1 ($(roles_of 1 | sed 's/,/, /g')) on $(url 1), data in $DATA"
start_node 1 "$(roles_of 1)"
wait_ready 1
if [ "$NODES" -eq 3 ] && [ "$GENERATORS" -eq 1 ]; then
  echo "[demo] starting n2 and n3 (storage, coordinator), joining through n1"
else
  echo "[demo] starting n2..n$NODES (n1..n$GENERATORS generate), joining through n1"
fi
for index in $(seq 2 "$NODES"); do start_node "$index" "$(roles_of "$index")" "127.0.0.1:$PORT"; done
for index in $(seq 2 "$NODES"); do wait_ready "$index"; done
for _ in $(seq 1 120); do ring_settled && break; sleep 1; done
ring_settled || { echo "[demo] the ring did not settle in 120 s; see $DATA/n*/node.log" >&2; exit 1; }

echo "[demo] ingesting samples/corpus through n2"
bounded 900 "$MESHRAG" ingest samples/corpus --node "$(url 2)"
echo
bounded 60 "$MESHRAG" status --node "$(url 1)"
echo
echo "[demo] Q: $QUESTION"
[ "$ASK_THROUGH" -eq 1 ] || echo "[demo] asking through n$ASK_THROUGH, which does not generate"
echo -n "[demo] A: "
bounded 600 "$MESHRAG" ask "$QUESTION" --node "$(url "$ASK_THROUGH")"

if [ "$MODE" = big ]; then
  trap - EXIT  # leave the nodes running
  echo
  echo "[demo] $NODES nodes are running in the background: $(url 1) .. $(url "$NODES") (pids ${PIDS[*]}; pid files and logs in $DATA/n*/)"
  echo "[demo] explore:   $MESHRAG status --node $(url 3)     $MESHRAG ask \"...\" --node $(url "$NODES")     open $(url 1)/"
  prefix=""  # the same settings find the same nodes
  [ -z "${MESHRAG_DEMO_DATA:-}" ] || prefix="MESHRAG_DEMO_DATA=$(printf '%q' "$MESHRAG_DEMO_DATA") "
  echo "[demo] take it down: ${prefix}scripts/demo.sh down   (add --wipe to delete the nodes' data too)"
fi
