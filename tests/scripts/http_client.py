#!/usr/bin/env python3
"""A wraft HTTP API client using Python's standard library only (ssl, http.client, json).

Usage: http_client.py CERTS_DIR PORT1,PORT2,... COMMAND ...
  put KEY VALUE            propose a kv put through the first node that answers; prints the JSON
  get KEY                  linearizable query; prints the JSON
  watch MACHINE FROM N     read N events from index FROM with SSE, reconnecting (to any node)
                           with Last-Event-ID after every disconnect; prints one JSON per line
Authenticates with the client certificate client-admin.{crt,key} from CERTS_DIR.
"""
import http.client
import json
import ssl
import sys
import time


def context(certs):
    ctx = ssl.create_default_context(cafile=f"{certs}/ca.crt")
    ctx.load_cert_chain(f"{certs}/client-admin.crt", f"{certs}/client-admin.key")
    return ctx


def call(ctx, ports, method, path, body=None, deadline_s=30.0):
    """Try the nodes in turn until one answers something other than 503 (no leader yet)."""
    end = time.time() + deadline_s
    last = None
    while time.time() < end:
        for port in ports:
            try:
                c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
                headers = {"Content-Type": "application/json"}
                c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
                r = c.getresponse()
                data = json.loads(r.read() or b"null")
                c.close()
                if r.status == 200:
                    return data
                last = (r.status, data)
                if r.status not in (502, 503, 504):
                    raise SystemExit(f"HTTP {r.status}: {data}")
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
        time.sleep(0.2)
    raise SystemExit(f"no answer within {deadline_s} s: {last}")


def watch(ctx, ports, machine, start, count):
    seen = []
    last_id = start - 1
    end = time.time() + 60
    attempt = 0
    while len(seen) < count and time.time() < end:
        port = ports[attempt % len(ports)]
        attempt += 1
        try:
            c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
            c.request("GET", f"/v1/machines/{machine}/watch", headers={"Last-Event-ID": str(last_id)})
            r = c.getresponse()
            if r.status != 200:
                body = r.read()
                if r.status == 410:
                    raise SystemExit(f"compacted: {body!r}")
                time.sleep(0.2)
                continue
            event = {}
            while len(seen) < count:
                line = r.fp.readline()
                if not line:
                    break
                line = line.decode().rstrip("\n")
                if line == "":
                    if "data" in event and event.get("event") == "applied":
                        data = json.loads(event["data"])
                        seen.append(data)
                        last_id = data["index"]
                        print(json.dumps(data), flush=True)
                    event = {}
                elif line.startswith(":"):
                    continue
                else:
                    k, _, v = line.partition(": ")
                    event[k] = v
            c.close()
        except (OSError, http.client.HTTPException):
            time.sleep(0.2)
    if len(seen) < count:
        raise SystemExit(f"only {len(seen)} of {count} events within 60 s")


def main():
    certs, ports, cmd, *args = sys.argv[1:]
    ports = [int(p) for p in ports.split(",")]
    ctx = context(certs)
    if cmd == "put":
        out = call(ctx, ports, "POST", "/v1/machines/kv/propose", {"op": "put", "key": args[0], "value": args[1]})
    elif cmd == "get":
        out = call(ctx, ports, "POST", "/v1/machines/kv/query", {"op": "get", "key": args[0]})
    elif cmd == "watch":
        watch(ctx, ports, args[0], int(args[1]), int(args[2]))
        return
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
