#!/usr/bin/env python3
"""MPREG topics from docs/PROTOCOL.md section 15 (pyzmq + msgpack only).

Usage: mpreg_topics.py --broker EP sub PATTERN... [--count N] [--backlog] [--timeout S]
       mpreg_topics.py --broker EP pub TOPIC PAYLOAD_JSON [--header k=v]... [--confirm]
       mpreg_topics.py --broker EP selftest [--retained]   (exit 0 only if every check passes)
       --curve BROKER_KEY KEY_FILE before the command: connect with CURVE
"""
import argparse, json, sys, time, tomllib
import msgpack, zmq
from mpreg_client import Client, MpregError, VERSION, _arg, _json

class Topics(Client):
    """A client connection plus one SUB socket carrying all its subscriptions."""
    def __init__(self, endpoint, context=None, curve=None):
        super().__init__(endpoint, context, curve)
        self.sub, self.events, self.queues = None, None, {}  # token -> [event (kind, body)]
    def close(self):
        if self.sub is not None:
            self.sub.close()
        super().close()
    def publish(self, topic, payload=None, headers=None, confirm=False, timeout=10.0):
        """Publishes; with confirm returns the `published` body ({msg, matched}), else None."""
        fields = {"topic": topic, "payload": payload, **({"headers": headers} if headers else {})}
        rid = self.send("publish", {**fields, **({"confirm": True} if confirm else {})})
        if not confirm:
            self.pending.pop(rid)  # no reply on success (an error would be dropped)
            return None
        return self.result(rid, timeout)
    def publish_batch(self, messages, timeout=10.0):
        return self.result(self.send("publish_batch", {"messages": messages, "confirm": True}), timeout)
    def subscribe(self, patterns, backlog=False, timeout=10.0):
        """Subscribes, connects the SUB, waits for `active`; returns (token, backlog count)."""
        fields = {"patterns": list(patterns), **({"backlog": True} if backlog else {})}
        reply = self.result(self.send("subscribe", fields), timeout)
        token = reply["sub"]
        if self.sub is None or self.events != reply["events"]:
            if self.sub is not None:
                self.sub.close()
            self.sub = self.sock.context.socket(zmq.SUB)
            self.secure(self.sub)  # the event socket runs CURVE too when the broker does
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.setsockopt(zmq.RCVHWM, 100000)
            self.sub.connect(reply["events"])
            self.events = reply["events"]
        self.queues[token] = []
        self.sub.setsockopt(zmq.SUBSCRIBE, token.encode())
        kind, body = self.next_event(token, timeout, want_active=True)
        return token, body["backlog"]
    def unsubscribe(self, token, timeout=10.0):
        self.result(self.send("unsubscribe", {"sub": token}), timeout)
        if token in self.queues:
            self.sub.setsockopt(zmq.UNSUBSCRIBE, token.encode())
            del self.queues[token]
    def next_event(self, token, timeout=10.0, want_active=False):
        """The next (kind, body) of a subscription: message, lagging (or active when asked)."""
        deadline = time.monotonic() + timeout
        while True:
            queue = self.queues[token]
            while queue:
                kind, body = queue.pop(0)
                if (kind == "active") == want_active:
                    return kind, body
            left = deadline - time.monotonic()
            if left <= 0 or not self.sub.poll(left * 1000):
                raise MpregError(901, "request_timeout", f"no event for {token} within {timeout} s")
            frames = self.sub.recv_multipart()
            if len(frames) != 4 or frames[1] != VERSION:
                continue
            tok, kind = frames[0].decode(), frames[2].decode()
            body = msgpack.unpackb(frames[3], strict_map_key=False)
            if tok not in self.queues:
                continue
            if kind == "messages":  # a batch: the same as that many `message` events
                self.queues[tok].extend(("message", dict(item, sub=tok)) for item in body["items"])
            else:
                self.queues[tok].append((kind, body))
    def next_message(self, token, timeout=10.0):
        while True:
            kind, body = self.next_event(token, timeout)
            if kind == "message":
                return body

def line(m):
    return _json({k: m.get(k, {} if k == "headers" else None) for k in ("topic", "payload", "headers", "seq", "id")})

def selftest(t, retained):
    def expect_error(code, f, *a, **kw):
        try:
            f(*a, **kw)
        except MpregError as e:
            assert e.code == code, (e.code, code, e.message)
            return
        raise AssertionError(f"expected error {code}")
    if retained:  # the broker runs with [topics] retain_count >= 2
        for i in range(3):
            t.publish("kept.one", i, confirm=True)
        t.publish("other.one", 9, confirm=True)
        tok, n = t.subscribe(["kept.*"], backlog=True)
        assert n >= 2, n
        got = [t.next_message(tok) for _ in range(n)]
        assert all(m.get("retained") for m in got) and got[-1]["payload"] == 2, got
        t.publish("kept.two", "live", confirm=True)
        live = t.next_message(tok)
        assert live["payload"] == "live" and live["seq"] == n + 1 and not live.get("retained"), live
    a, _ = t.subscribe(["orders.*.eu", "orders.#"])  # overlapping: one copy
    b, _ = t.subscribe(["alerts.#", "a*"])
    r = t.publish("orders.42.eu", {"qty": 3}, headers={"source": "py"}, confirm=True)
    assert r["matched"] == 1, r
    m = t.next_message(a)
    assert (m["topic"], m["payload"], m["headers"], m["seq"], m["id"]) == \
        ("orders.42.eu", {"qty": 3}, {"source": "py"}, 1, r["msg"]), m
    for topic in ("alerts", "alerts.disk.full", "a*", "ab", "orders"):
        t.publish(topic, topic)
    t.publish_batch([{"topic": "orders.7.us", "payload": 1}, {"topic": "orders.8.eu", "payload": 2}])
    assert [t.next_message(b)["payload"] for _ in range(3)] == ["alerts", "alerts.disk.full", "a*"]
    got = [t.next_message(a) for _ in range(3)]
    assert [(x["payload"], x["seq"]) for x in got] == [("orders", 2), (1, 3), (2, 4)], got
    expect_error(601, t.subscribe, [""])
    expect_error(601, t.subscribe, ["x" * 300])
    expect_error(600, t.publish, "", 1, confirm=True)
    expect_error(602, t.unsubscribe, "s" + "0" * 26)
    t.unsubscribe(a)
    assert t.publish("orders.1.eu", 0, confirm=True)["matched"] == 0
    print("topics selftest: all checks passed")

def main(argv=None):
    parser = argparse.ArgumentParser(description="MPREG topics (Python, pyzmq + msgpack)")
    parser.add_argument("--broker", default="tcp://127.0.0.1:7400", help="client endpoint")
    parser.add_argument("--curve", nargs=2, metavar=("BROKER_KEY", "KEY_FILE"),
                        help="CURVE: the broker's public key (its .pub file, or Z85) and this client's key-pair file")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sub")
    s.add_argument("patterns", nargs="+")
    s.add_argument("--count", type=int)
    s.add_argument("--backlog", action="store_true")
    s.add_argument("--timeout", type=float)
    p = sub.add_parser("pub")
    p.add_argument("topic")
    p.add_argument("payload")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--confirm", action="store_true")
    sub.add_parser("selftest").add_argument("--retained", action="store_true")
    args = parser.parse_args(argv)
    curve = None
    if args.curve:  # a key-pair file written by `mpreg keygen` is TOML: public = "...", secret = "..."
        with open(args.curve[1], "rb") as f:
            pair = tomllib.load(f)
        broker_key = args.curve[0]  # Z85 keys may start with "-": pass the .pub file then
        if len(broker_key) != 40:
            with open(broker_key, "rb") as f:
                broker_key = tomllib.load(f)["public"]
        curve = (broker_key, pair["public"], pair["secret"])
    try:
        with Topics(args.broker, curve=curve) as t:
            if args.cmd == "selftest":
                selftest(t, args.retained)
            elif args.cmd == "pub":
                headers = dict(h.split("=", 1) for h in args.header)
                r = t.publish(args.topic, _arg(args.payload), headers, confirm=True)
                if args.confirm:
                    print(_json({"matched": r["matched"]}))
            else:
                token, _ = t.subscribe(args.patterns, args.backlog)
                deadline = time.monotonic() + args.timeout if args.timeout else None
                n = 0
                while args.count is None or n < args.count:
                    left = 3600.0 if deadline is None else deadline - time.monotonic()
                    try:
                        kind, body = t.next_event(token, max(left, 0.0))
                    except MpregError:
                        if args.count is None:
                            break  # the timeout ends an uncounted subscription normally
                        raise
                    if kind == "lagging":
                        print(_json({"lagging": body}), file=sys.stderr)
                    elif kind == "message":
                        print(line(body), flush=True)
                        n += 1
    except MpregError as e:
        print(_json({"error": e.reply}), file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
