#!/usr/bin/env bash
# Memory soak of the orchestrator: the four services and one `baton run` (release
# binaries), `baton load` at a fixed number in flight for about DURATION seconds, and the
# orchestrator's resident memory sampled every 30 s. Prints the samples, the growth from
# the first sample after warm-up to the last, and the load report.
#
#   cargo build --release --workspace --features dev-tools
#   bench/soak.sh                      # 10 minutes at 512 in flight
#   IN_FLIGHT=10000 CONCURRENCY=10000 PAYMENTS=60000 bench/soak.sh   # 10,000 in flight
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
DURATION=${DURATION:-600}
IN_FLIGHT=${IN_FLIGHT:-512}
CONCURRENCY=${CONCURRENCY:-1024}
RATE_GUESS=${RATE_GUESS:-300}
PAYMENTS=${PAYMENTS:-$((DURATION * RATE_GUESS))}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export AMQP_URL RUST_LOG=warn
PREFIX=soak-$(date +%s)
DIR=$(mktemp -d)
# On exit: stop the processes, remove the files and the run's queues and exchanges (the
# broker is the developer's; the prefix is this run's own).
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DIR"
  for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX\\."); do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
  for e in $(rabbitmqctl -q list_exchanges name 2>/dev/null | grep "^$PREFIX\\."); do
    curl -fsS -u guest:guest -X DELETE "http://127.0.0.1:15672/api/exchanges/%2f/$e" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

for s in authorization risk pci transaction; do
  extra=()
  [[ $s == authorization || $s == transaction ]] && extra=(--ledger-url "sqlite://$DIR/ledger.db")
  "$BIN/baton-$s" --prefix "$PREFIX" --http-addr 127.0.0.1:0 "${extra[@]}" 2>"$DIR/$s.log" &
done
"$BIN/baton" run --prefix "$PREFIX" --concurrency "$CONCURRENCY" --http-addr 127.0.0.1:0 \
  --journal-url "sqlite://$DIR/journal.db" 2>"$DIR/orchestrator.log" &
ORCH=$!

"$BIN/baton" load --prefix "$PREFIX" --payments "$PAYMENTS" --in-flight "$IN_FLIGHT" \
  --cards good --json >"$DIR/report.json" &
LOAD=$!

echo "seconds rss_mib hwm_mib"
start=$(date +%s)
while kill -0 "$LOAD" 2>/dev/null; do
  now=$(($(date +%s) - start))
  rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$ORCH/status)
  hwm=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/$ORCH/status)
  echo "$now $rss $hwm" | tee -a "$DIR/rss.txt"
  sleep 30
done
wait "$LOAD" || true
# The peak since start, read once the load is done (a run shorter than one sampling
# interval still shows it).
awk '/VmHWM/ {printf "orchestrator peak resident memory (VmHWM): %.1f MiB\n", $2/1024}' /proc/$ORCH/status
cat "$DIR/report.json"
awk 'NR==3 {first=$2} {last=$2} END {if (first) printf "growth from t=60s to the end: %.1f%%\n", (last-first)*100/first}' "$DIR/rss.txt"
