"""Persistent python3-libvirt worker for bench/compare-python.js.

Reads one JSON request per line on stdin, answers one JSON line on stdout. Times only the libvirt call
(time.perf_counter_ns around it), so process start and the pipe are not measured.
"""
import json
import sys
import time

import libvirt

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

conn = None
domains = {}


def handle(req):
    global conn
    op = req["op"]
    if op == "open":
        conn = libvirt.open(req["uri"])
        return {}
    if op == "close":
        conn.close()
        return {}
    dom = domains.get(req["name"])
    if dom is None:
        dom = domains[req["name"]] = conn.lookupByName(req["name"])
    start = time.perf_counter_ns()
    if op == "suspend":
        dom.suspend()
    elif op == "resume":
        dom.resume()
    elif op == "snapshot":
        dom.snapshotCreateXML(req["xml"], req["flags"])
    else:
        raise ValueError("unknown op " + op)
    return {"ns": time.perf_counter_ns() - start}


for line in sys.stdin:
    req = json.loads(line)
    try:
        res = handle(req)
        res["ok"] = True
    except Exception as e:  # reported to the driver, which fails the run
        res = {"ok": False, "error": str(e)}
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
