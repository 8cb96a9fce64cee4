#!/usr/bin/env python3
"""Broker operations and CPU per payment per process, during one `baton bench` run.

Polls a RabbitMQ node's management API and /proc once a second while a bench client is
connected, then prints, over the middle of the run (30 %-85 % of the samples), each
process's channel counters (publish, confirm, deliver, ack, ...) and CPU per payment,
and each queue's publishes/deliveries per payment. Payments = the client's publishes.

Use a node of its own (see BENCHMARKS.md, "Trust boundary"): on a shared node other
clients' channels are not counted, but its CPU is shared.

usage: BROKER_API=http://127.0.0.1:15691/api BROKER_PID=$(cat node/pid) \
         bench/broker-ops.py OUTFILE &   # then start `baton bench --amqp-url ...`
"""
import json, os, sys, time, urllib.request, base64, collections
API = os.environ.get("BROKER_API", "http://127.0.0.1:15672/api")
AUTH = "Basic " + base64.b64encode(os.environ.get("BROKER_AUTH", "guest:guest").encode()).decode()
def get(path):
    req = urllib.request.Request(API + path, headers={"Authorization": AUTH})
    return json.load(urllib.request.urlopen(req, timeout=10))
OPS = ["publish", "confirm", "deliver", "deliver_no_ack", "ack", "get", "redeliver", "return_unroutable", "drop_unroutable"]
def proc_of(conn_name):
    n = conn_name
    for key in ["authorization", "risk", "pci", "transaction"]:
        if n.startswith("baton-" + key):
            return key
    if n.startswith("baton client") or "client" in n: return "client"
    if "events" in n: return "orchestrator"
    if n.startswith("baton orchestrator") or n.startswith("baton run") or "orchestrator" in n: return "orchestrator"
    return n.split(" ")[0]
TICK = os.sysconf("SC_CLK_TCK")
BROKER = int(os.environ.get("BROKER_PID", "0"))
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK
def procs():
    c = collections.Counter()
    for d in os.listdir("/proc"):
        if not d.isdigit(): continue
        try:
            argv = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
            if not any(a.startswith(b"bench-") for a in argv): continue
            base = os.path.basename(argv[0].decode())
            kind = base.replace("baton-", "") if base != "baton" else ("orchestrator" if b"run" in argv else "baton?")
            c[kind] += cpu(d)
        except Exception:
            pass
    try:
        c["broker"] = cpu(BROKER)
    except Exception: pass
    return c
def snapshot():
    conns = {c["name"]: (c.get("client_properties") or {}).get("connection_name", c["name"]) for c in get("/connections?columns=name,client_properties")}
    chans = get("/channels?columns=name,connection_details,message_stats,number")
    per = collections.defaultdict(lambda: collections.Counter())
    names = set()
    for c in chans:
        cn = conns.get((c.get("connection_details") or {}).get("name", "?"), "?")
        names.add(cn)
        ms = c.get("message_stats") or {}
        p = proc_of(cn)
        for op in OPS:
            per[p][op] += ms.get(op, 0)
    queues = get("/queues?columns=name,message_stats")
    q = {}
    for x in queues:
        ms = x.get("message_stats") or {}
        q[x["name"]] = collections.Counter({k: ms.get(k, 0) for k in ["publish", "deliver_get", "ack", "redeliver"]})
    return time.time(), per, q, names, procs()
out = open(sys.argv[1], "w")
snaps = []
seen = False
start = time.time()
while True:
    try:
        s = snapshot()
    except Exception as e:
        time.sleep(1); continue
    active = any(p == "client" for p in s[1])
    if active:
        seen = True
        snaps.append(s)
    elif seen or time.time() - start > 900:
        break
    time.sleep(1)
if len(snaps) < 6:
    print("too few samples", len(snaps)); sys.exit(1)
print("connections:", sorted(snaps[-1][3]), file=out)
# steady window: from 30% to 85% of the samples
a, b = snaps[int(len(snaps) * 0.3)], snaps[int(len(snaps) * 0.85)]
payments = b[1]["client"]["publish"] - a[1]["client"]["publish"]
print(f"window {b[0]-a[0]:.1f}s, payments (client publishes) {payments}", file=out)
for p in sorted(b[1]):
    d = {op: b[1][p][op] - a[1][p][op] for op in OPS}
    print(f"{p:14s} " + " ".join(f"{op}={d[op]/max(payments,1):.2f}" for op in OPS if d[op]), file=out)
print("CPU ms per payment: " + " ".join(f"{k}={(b[4][k]-a[4].get(k,0))*1000/max(payments,1):.2f}" for k in sorted(b[4])), file=out)
print(f"throughput in window {payments/(b[0]-a[0]):.1f}/s", file=out)
print("queues (per payment): publish / deliver_get / ack / redeliver", file=out)
for name in sorted(b[2]):
    if name in a[2]:
        d = b[2][name] - a[2][name]
        if sum(d.values()):
            print(f"  {name:60s} " + " ".join(f"{k}={d[k]/max(payments,1):.2f}" for k in ["publish", "deliver_get", "ack", "redeliver"]), file=out)
out.close()
print(open(sys.argv[1]).read())
