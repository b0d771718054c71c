#!/usr/bin/env python3
"""MPREG client from docs/PROTOCOL.md (pyzmq + msgpack only); usage in tests/python/README.md."""
import argparse, itertools, json, os, sys, time
import msgpack, zmq

VERSION = b"MPREG/1"
SILENCE = 0.6  # s without a word from the broker before asking it (ping); as long again: move on
# (a dead broker is left within about 1.2-1.35 s; a live one answers a ping at once)
RESEND = ("plan", "ping", "status")  # sent again to the next broker (a plan under its plan id)
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

def plan_id():
    """A ULID (48-bit ms timestamp, 80 random bits, Crockford base32): the id this client gives
    a plan, so that it can send it again after a move without it running twice where it was seen."""
    n = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(CROCKFORD[(n >> (5 * i)) & 31] for i in range(25, -1, -1))

class MpregError(Exception):
    """A failed request: `reply` is the broker's error body (or a client-side 9xx error)."""
    def __init__(self, code, kind, message, step=None, reply=None):
        super().__init__(f"{kind} ({code}): {message}")
        self.code, self.kind, self.message, self.step = code, kind, message, step
        self.reply = reply if reply is not None else {"code": code, "kind": kind, "message": message}

class Client:
    """One DEALER connection at a time, to one broker of an ordered list; many requests in
    flight, replies matched by id. A broker silent for SILENCE s is pinged; silent SILENCE s
    more, the client moves to the next broker: plans (under their plan id), pings and statuses
    are sent again there, other requests in flight fail with 904 connection_lost."""
    def __init__(self, endpoints, context=None, curve=None):
        """endpoints: "tcp://a:7400,tcp://b:7400" or a list; curve: (broker public key, own
        public key, own secret key), Z85 (docs/SECURITY.md)."""
        parts = endpoints.split(",") if isinstance(endpoints, str) else endpoints
        self.endpoints = [e.strip() for e in parts if e.strip()]
        if not self.endpoints:
            raise MpregError(902, "invalid_input", "no broker endpoint given")
        self.context, self.curve, self.sock, self.at, self.generation = context or zmq.Context.instance(), curve, None, -1, 0
        self.ids, self.pending, self.replies = itertools.count(1), {}, {}  # pending: id -> type
        self.bodies = {}  # id -> body of a request in flight that may be sent again
        self.progress, self.last_progress = {}, []  # id -> [progress bodies]; the last plan's
        self.connect_next()
    def connect_next(self):
        """Closes the connection (nothing still queued in it leaves) and connects the next broker."""
        if self.sock is not None:
            self.sock.close(linger=0)
        self.at = (self.at + 1) % len(self.endpoints)
        self.endpoint = self.endpoints[self.at]
        self.sock = self.context.socket(zmq.DEALER)
        self.secure(self.sock)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)
        self.heard, self.probe = time.monotonic(), None  # last word from the broker; ping time
    def check_broker(self):
        """Called when nothing arrived for a while: ping a silent broker, move on if it stays so."""
        now = time.monotonic()
        if self.probe is None and now - self.heard > SILENCE:
            self.probe = now
            self.sock.send_multipart([VERSION, b"ping", msgpack.packb({"id": next(self.ids)})])
        elif self.probe is not None and now - self.probe > SILENCE:
            self.move()
    def move(self):
        lost = self.endpoint
        self.connect_next()
        self.generation += 1
        for rid, kind in sorted(self.pending.items()):
            if kind in RESEND and rid in self.bodies:
                self.sock.send_multipart([VERSION, kind.encode(), msgpack.packb(self.bodies[rid])])
            else:
                del self.pending[rid]
                self.replies[rid] = ("error", {"id": rid, "code": 904, "kind": "connection_lost",
                                               "message": f"the connection to {lost} was lost; whether it ran is unknown"})
        self.on_move()
    def on_move(self):
        """The connection moved to another broker (subclasses make their subscriptions again)."""
    def secure(self, sock):  # CURVE client options, set before connecting
        if self.curve:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (k.encode() for k in self.curve)
    def close(self): self.sock.close(linger=0)
    def __enter__(self): return self
    def __exit__(self, *exc): self.close()
    def send(self, kind, fields):
        """Sends a request and returns its id (first in the body: PROTOCOL.md section 4)."""
        rid = next(self.ids)
        body = {"id": rid, **fields, **({"plan": plan_id()} if kind == "plan" else {})}
        self.sock.send_multipart([VERSION, kind.encode(), msgpack.packb(body)])
        self.pending[rid] = kind
        if kind in RESEND:
            self.bodies[rid] = body
        return rid
    def _receive(self):
        frames = self.sock.recv_multipart()
        self.heard, self.probe = time.monotonic(), None  # the broker is there
        if len(frames) != 3 or frames[0] != VERSION:
            return
        kind, body = frames[1].decode("ascii", "replace"), msgpack.unpackb(frames[2], strict_map_key=False)
        rid = body.get("id") if isinstance(body, dict) else None
        if rid is None and kind == "error" and len(self.pending) == 1:
            rid = next(iter(self.pending))  # the only request it can answer
        if kind == "progress":
            self.progress.setdefault(rid, []).append(body)
        elif self.pending.pop(rid, None) is not None:
            self.bodies.pop(rid, None)
            self.replies[rid] = (kind, body)
    def wait(self, rid, timeout=10.0):
        """The final (type, body) for request `rid`; MpregError 901 if it does not come in time."""
        deadline = time.monotonic() + timeout
        while rid not in self.replies:
            left = deadline - time.monotonic()
            if left <= 0:
                self.bodies.pop(rid, None)
                if self.pending.pop(rid, None) == "plan":  # nobody waits for it any more
                    self.sock.send_multipart([VERSION, b"cancel", msgpack.packb({"id": rid})])
                raise MpregError(901, "request_timeout", f"no reply to request {rid} within {timeout} s")
            if self.sock.poll(min(left, SILENCE / 4) * 1000):
                self._receive()
            else:
                self.check_broker()
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
    parser.add_argument("--broker", default=os.environ.get("MPREG_BROKER", "tcp://127.0.0.1:7400"),
                        help="client endpoint, or a comma-separated list to fail over between (env MPREG_BROKER)")
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
