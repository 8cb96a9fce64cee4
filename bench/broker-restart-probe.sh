#!/usr/bin/env bash
# Boots a throw-away RabbitMQ node of its own (own node name, ports and data directory;
# the broker on 5672 is never touched), declares PREFIXES copies of Baton's quorum-queue
# topology with the dead-letter STRATEGY given, parks PARKED messages in each copy's
# retry tiers, then restarts the node (stop_app/start_app, then a full stop and boot) and
# reports boot seconds, memory and what the node's log says. The node is stopped and its
# directory removed on exit, whatever happens.
#
#   PREFIXES=30 STRATEGY=at-least-once PARKED=5 bench/broker-restart-probe.sh
#
# Each prefix is 10 quorum queues: requests, dead, results, attention, cmd.{authorization,
# risk,pci,transaction}, retry.{1000,5000}ms... as `baton run` declares them.
set -euo pipefail
PREFIXES="${PREFIXES:-30}"
STRATEGY="${STRATEGY:-at-least-once}"   # at-least-once | at-most-once
PARKED="${PARKED:-5}"                   # messages per retry tier and prefix
DROP_TARGETS="${DROP_TARGETS:-0}"       # 1: delete every requests queue before the restart
TTL_MS="${TTL_MS:-600000}"              # retry-tier TTL (long: still parked at the restart)

bin=/usr/lib/rabbitmq/bin
[ -x "$bin/rabbitmq-server" ] || bin=/usr/sbin
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir="$(mktemp -d /tmp/baton-probe-XXXXXX)"
node="baton-probe-$(basename "$dir" | cut -d- -f3)@localhost"
amqp_port="$(free_port)"; mgmt_port="$(free_port)"; dist_port="$(free_port)"
api="http://127.0.0.1:$mgmt_port/api"

export RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT="$amqp_port" RABBITMQ_DIST_PORT="$dist_port"
export RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/pid"
export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
printf 'listeners.tcp.default = 127.0.0.1:%s\nmanagement.tcp.port = %s\nmanagement.tcp.ip = 127.0.0.1\n' \
  "$amqp_port" "$mgmt_port" >"$dir/rabbitmq.conf"
echo '[rabbitmq_management].' >"$dir/enabled_plugins"
ctl() { "$bin/rabbitmqctl" -n "$node" "$@"; }
cleanup() {
  ctl stop >/dev/null 2>&1 || { [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null; } || true
  rm -rf "$dir"
}
trap cleanup EXIT
log() { printf '%s %s\n' "$(date +%T)" "$*"; }

since() { python3 -c "print(round($(date +%s.%N) - $1, 1))"; }
boot() { # $1: what, $2: when the boot began; waits until the node has booted
  "$bin/rabbitmq-server" -detached >/dev/null
  ctl wait "$dir/pid" --timeout 1800 >/dev/null
  ctl await_startup --timeout 1800 >/dev/null
  log "$1: booted in $(since "$2") s"
}

log "node $node amqp $amqp_port management $mgmt_port dir $dir"
boot "first boot" "$(date +%s.%N)"
for _ in $(seq 60); do curl -fs -u guest:guest "$api/overview" >/dev/null && break; sleep 1; done

declare_queue() { # $1 name, $2 JSON arguments
  curl -fsS -o /dev/null -u guest:guest -X PUT -H 'content-type: application/json' \
    "$api/queues/%2f/$1" -d "{\"durable\":true,\"arguments\":$2}"
}
dlx() { # $1 target; at-least-once needs reject-publish overflow
  local args="\"x-dead-letter-exchange\":\"\",\"x-dead-letter-routing-key\":\"$1\""
  [ "$STRATEGY" = at-least-once ] &&
    args="$args,\"x-dead-letter-strategy\":\"at-least-once\",\"x-overflow\":\"reject-publish\""
  echo "$args"
}
q='"x-queue-type":"quorum"'
t0=$(date +%s)
for i in $(seq "$PREFIXES"); do
  p="probe-$i"
  for plain in dead results attention; do declare_queue "$p.$plain" "{$q}"; done
  declare_queue "$p.requests" "{$q,\"x-delivery-limit\":20,$(dlx "$p.dead")}"
  for s in authorization risk pci transaction; do
    declare_queue "$p.cmd.$s" "{$q,\"x-delivery-limit\":20,$(dlx "$p.dead")}"
  done
  for tier in 1000 5000; do
    declare_queue "$p.retry.${tier}ms" "{$q,\"x-message-ttl\":$TTL_MS,$(dlx "$p.requests")}"
    for m in $(seq "$PARKED"); do
      curl -fsS -u guest:guest -X POST -H 'content-type: application/json' \
        "$api/exchanges/%2f/amq.default/publish" \
        -d "{\"properties\":{\"delivery_mode\":2},\"routing_key\":\"$p.retry.${tier}ms\",\"payload\":\"parked $m\",\"payload_encoding\":\"string\"}" |
        grep -q '"routed":true' || { echo "publish to $p.retry.${tier}ms not routed" >&2; exit 1; }
    done
  done
done
queues=$(ctl -q list_queues name | wc -l)
log "declared $queues quorum queues ($STRATEGY) in $(($(date +%s) - t0)) s, $PARKED parked per tier"
if [ "$DROP_TARGETS" = 1 ]; then
  for i in $(seq "$PREFIXES"); do ctl -q delete_queue "probe-$i.requests" >/dev/null; done
  log "deleted every requests queue: the retry tiers' dead-letter target is gone"
fi
parked() { # messages in the retry tiers and in the requests queues
  ctl -q list_queues name messages | awk '$1 ~ /retry/ {n += $2} $1 ~ /requests/ {r += $2} END {print "parked: " n ", in requests: " r}'
}
# Quorum queues report their counts on a 5 s tick.
expected="parked: $((PREFIXES * 2 * PARKED)), in requests: 0"
for _ in $(seq 30); do [ "$(parked)" = "$expected" ] && break; sleep 1; done
parked_before="$(parked)"
log "before the restart: $parked_before"
mem() { ctl -q status 2>/dev/null | awk '/^Total memory used/ {print "memory: " $4 " " $5}'; }
log "$(mem); dlx workers: $(ctl -q eval 'length(supervisor:which_children(rabbit_fifo_dlx_sup)).' 2>&1)"

t0=$(date +%s.%N)
ctl -q stop_app
log "stop_app took $(since "$t0") s"
t0=$(date +%s.%N)
ctl -q start_app
ctl await_startup --timeout 1800 >/dev/null
log "start_app: booted in $(since "$t0") s"
t0=$(date +%s.%N)
ctl -q stop
log "stop took $(since "$t0") s"
boot "full restart" "$(date +%s.%N)"
log "$(mem); queues: $(ctl -q list_queues name | wc -l); dlx workers: $(ctl -q eval 'length(supervisor:which_children(rabbit_fifo_dlx_sup)).' 2>&1)"
for _ in $(seq 60); do [ "$(parked)" = "$parked_before" ] && break; sleep 1; done
log "after the restart: $(parked)"
echo "--- warnings and errors in the node's log:"
grep -hE '\[(warning|error)\]' "$dir"/log/*.log | sed -E 's/^[^ ]+ //' | cut -c1-220 | sort | uniq -c | sort -rn | head -20
echo "--- boot steps, last 5 of the final boot:"
grep -h 'Running boot step' "$dir/log/$node.log" | tail -5 | cut -c1-160
