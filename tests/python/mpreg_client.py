#!/usr/bin/env python3
"""MPREG client from docs/PROTOCOL.md (pyzmq + msgpack only); usage in tests/python/README.md."""
import argparse, itertools, json, sys, time
import msgpack, zmq

VERSION = b"MPREG/1"

class MpregError(Exception):
    """A failed request: `reply` is the broker's error body (or a client-side 9xx error)."""
    def __init__(self, code, kind, message, step=None, reply=None):
        super().__init__(f"{kind} ({code}): {message}")
        self.code, self.kind, self.message, self.step = code, kind, message, step
        self.reply = reply if reply is not None else {"code": code, "kind": kind, "message": message}

class Client:
    """One DEALER connection; many requests in flight, replies matched by id."""
    def __init__(self, endpoint, context=None, curve=None):
        """curve: (broker public key, own public key, own secret key), Z85 (docs/SECURITY.md)."""
        self.sock, self.curve = (context or zmq.Context.instance()).socket(zmq.DEALER), curve
        self.secure(self.sock)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.ids, self.pending, self.replies = itertools.count(1), {}, {}  # pending: id -> type
        self.progress, self.last_progress = {}, []  # id -> [progress bodies]; the last plan's
    def secure(self, sock):  # CURVE client options, set before connecting
        if self.curve:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (k.encode() for k in self.curve)
    def close(self): self.sock.close()
    def __enter__(self): return self
    def __exit__(self, *exc): self.close()
    def send(self, kind, fields):
        """Sends a request and returns its id (first in the body: PROTOCOL.md section 4)."""
        rid = next(self.ids)
        self.sock.send_multipart([VERSION, kind.encode(), msgpack.packb({"id": rid, **fields})])
        self.pending[rid] = kind
        return rid
    def _receive(self):
        frames = self.sock.recv_multipart()
        if len(frames) != 3 or frames[0] != VERSION:
            return
        kind, body = frames[1].decode("ascii", "replace"), msgpack.unpackb(frames[2], strict_map_key=False)
        rid = body.get("id") if isinstance(body, dict) else None
        if rid is None and kind == "error" and len(self.pending) == 1:
            rid = next(iter(self.pending))  # the only request it can answer
        if kind == "progress":
            self.progress.setdefault(rid, []).append(body)
        elif self.pending.pop(rid, None) is not None:
            self.replies[rid] = (kind, body)
    def wait(self, rid, timeout=10.0):
        """The final (type, body) for request `rid`; MpregError 901 if it does not come in time."""
        deadline = time.monotonic() + timeout
        while rid not in self.replies:
            left = deadline - time.monotonic()
            if left <= 0:
                if self.pending.pop(rid, None) == "plan":  # nobody waits for it any more
                    self.sock.send_multipart([VERSION, b"cancel", msgpack.packb({"id": rid})])
                raise MpregError(901, "request_timeout", f"no reply to request {rid} within {timeout} s")
            if self.sock.poll(left * 1000):
                self._receive()
        return self.replies.pop(rid)
    def result(self, rid, timeout=10.0):
        kind, body = self.wait(rid, timeout)
        self.last_progress = self.progress.pop(rid, [])
        if kind == "error":
            raise MpregError(body.get("code"), body.get("kind"), body.get("message", ""), body.get("step"), body)
        return body
    def send_plan(self, steps, all_results=False, progress=False, deadline_ms=None):
        fields = {"steps": list(steps), "deadline_ms": deadline_ms,
                  "all_results": all_results or None, "progress": progress or None}
        return self.send("plan", {k: v for k, v in fields.items() if v is not None})
    def plan(self, steps, all_results=False, progress=False, deadline_ms=None, timeout=10.0):
        """Runs a plan; returns its results dict or raises MpregError."""
        timeout = max(timeout, deadline_ms / 1000 + 1) if deadline_ms else timeout
        return self.result(self.send_plan(steps, all_results, progress, deadline_ms), timeout)["results"]
    def plan_many(self, plans, timeout=10.0, **options):
        """Sends every plan, then collects: a list of results dicts or MpregErrors, in order."""
        rids = [self.send_plan(steps, **options) for steps in plans]
        deadline, out = time.monotonic() + timeout, []
        for rid in rids:
            try:
                out.append(self.result(rid, max(0.0, deadline - time.monotonic()))["results"])
            except MpregError as e:
                out.append(e)
        return out
    def call(self, fun, *args, locs=None, timeout=10.0):
        """A one-step plan: fun(*args) on a worker holding every resource in `locs`."""
        name = "call"
        while name in repr(args):  # no argument may read as a reference to the step itself
            name += "_"
        step = {"name": name, "fun": fun, "args": list(args), **({"locs": list(locs)} if locs else {})}
        return self.plan([step], timeout=timeout)[name]
    def status(self, timeout=10.0): return self.result(self.send("status", {}), timeout)
    def ping(self, timeout=10.0): return self.result(self.send("ping", {}), timeout)["broker"]

def _json(value):
    return json.dumps(value, ensure_ascii=False, default=lambda v: v.hex() if isinstance(v, bytes) else repr(v))

def _arg(text):
    try:
        return json.loads(text)
    except ValueError:
        return text  # not JSON: a plain string

def main(argv=None):
    parser = argparse.ArgumentParser(description="MPREG client (Python, pyzmq + msgpack)")
    parser.add_argument("--broker", default="tcp://127.0.0.1:7400", help="client endpoint")
    parser.add_argument("--timeout", type=float, default=35.0, help="seconds to wait for a reply")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="run a plan file: [steps...] or {steps, all_results, deadline_ms}")
    p.add_argument("file", help="JSON file, - for stdin")
    p.add_argument("--all", action="store_true", help="all step results, not only the sinks'")
    c = sub.add_parser("call", help="call FUN with ARGs (each parsed as JSON, else a string)")
    c.add_argument("fun")
    c.add_argument("args", nargs="*")
    c.add_argument("--locs", default="", help="comma-separated resources")
    for name in ("status", "ping"): sub.add_parser(name)
    args = parser.parse_args(argv)
    try:
        with Client(args.broker) as client:
            if args.cmd == "plan":
                try:
                    with (sys.stdin if args.file == "-" else open(args.file)) as f:
                        spec = json.load(f)
                except (OSError, ValueError) as e:
                    raise MpregError(902, "invalid_input", f"{args.file}: {e}")
                spec = {"steps": spec} if isinstance(spec, list) else spec
                if not isinstance(spec, dict) or not isinstance(spec.get("steps"), list):
                    raise MpregError(902, "invalid_input", 'a plan file holds [steps...] or {"steps": [...]}')
                out = client.plan(spec["steps"], args.all or bool(spec.get("all_results")),
                                  deadline_ms=spec.get("deadline_ms"), timeout=args.timeout)
            elif args.cmd == "call":
                locs = [x for x in args.locs.split(",") if x]
                out = client.call(args.fun, *map(_arg, args.args), locs=locs, timeout=args.timeout)
            else:
                out = client.status(args.timeout) if args.cmd == "status" else {"broker": client.ping(args.timeout)}
    except MpregError as e:
        print(_json({"error": e.reply}), file=sys.stderr)
        return 1
    except zmq.ZMQError as e:
        print(_json({"error": {"code": 900, "kind": "connection_failed", "message": str(e)}}), file=sys.stderr)
        return 1
    print(_json(out))
    return 0

if __name__ == "__main__":
    sys.exit(main())
