#!/usr/bin/env python3
"""MPREG topics from docs/PROTOCOL.md section 15 (pyzmq + msgpack only).

Usage: mpreg_topics.py --broker EP sub PATTERN... [--count N] [--backlog] [--timeout S]
       mpreg_topics.py --broker EP pub TOPIC PAYLOAD_JSON [--header k=v]... [--confirm]
       mpreg_topics.py --broker EP selftest [--retained]   (exit 0 only if every check passes)
       --curve BROKER_KEY KEY_FILE before the command: connect with CURVE
"""
import argparse, json, os, sys, time, tomllib
import msgpack, zmq
from mpreg_client import Client, MpregError, SILENCE, VERSION, _arg, _json

class Topics(Client):
    """A client connection plus one SUB socket carrying all its subscriptions. A subscription is
    known by its first token (its key); after a move to another broker it is made again there
    (with the backlog if it asked for it) and its stream yields a `resubscribed` event."""
    def __init__(self, endpoints, context=None, curve=None):
        self.sub, self.events = None, None
        self.queues, self.subs, self.keys = {}, {}, {}  # key -> [(kind, body)]; key -> (fields, generation); token -> key
        super().__init__(endpoints, context, curve)
    def close(self):
        if self.sub is not None:
            self.sub.close(linger=0)
        super().close()
    def on_move(self):
        """Every token died with the old broker; next_event subscribes again on the new one."""
        if self.sub is not None:
            self.sub.close(linger=0)
        self.sub, self.events, self.keys = None, None, {}
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
        """Subscribes, connects the SUB, waits for `active`; returns (key, backlog count)."""
        fields = {"patterns": list(patterns), **({"backlog": True} if backlog else {})}
        for _ in range(len(self.endpoints) + 1):  # moved meanwhile: again on the next broker
            made = self._make(None, fields, timeout)
            if made:
                return made
        raise MpregError(904, "connection_lost", "the brokers kept going away while subscribing")
    def _make(self, key, fields, timeout):
        """Makes a subscription on the current broker: (key, backlog count), or None if the
        connection moved meanwhile (whatever was made died with that broker)."""
        generation = self.generation
        try:
            reply = self.result(self.send("subscribe", fields), timeout)
        except MpregError as e:
            if e.code == 904:
                return None
            raise
        token = reply["sub"]
        key = key or token
        if self.sub is None or self.events != reply["events"]:
            if self.sub is not None:
                self.sub.close(linger=0)
            self.sub = self.context.socket(zmq.SUB)
            self.secure(self.sub)  # the event socket runs CURVE too when the broker does
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.setsockopt(zmq.RCVHWM, 100000)
            self.sub.connect(reply["events"])
            self.events = reply["events"]
        self.keys[token], self.subs[key] = key, (fields, generation)
        self.queues.setdefault(key, [])
        self.sub.setsockopt(zmq.SUBSCRIBE, token.encode())
        event = self.next_event(key, timeout, want_active=True)
        if event is None or generation != self.generation:
            return None
        return key, event[1]["backlog"]
    def unsubscribe(self, key, timeout=10.0):
        token = next((t for t, k in self.keys.items() if k == key), key)
        self.result(self.send("unsubscribe", {"sub": token}), timeout)
        if key in self.queues:
            self.sub.setsockopt(zmq.UNSUBSCRIBE, token.encode())
            del self.queues[key], self.subs[key], self.keys[token]
    def next_event(self, key, timeout=10.0, want_active=False):
        """The next (kind, body) of a subscription: message, lagging, resubscribed (or active
        when asked: then None if the connection moved before it came)."""
        deadline, generation = time.monotonic() + timeout, self.generation
        while True:
            queue = self.queues[key]
            while queue:
                kind, body = queue.pop(0)
                if (kind == "active") == want_active:
                    return kind, body
            if want_active and generation != self.generation:
                return None
            fields, made = self.subs[key]
            if not want_active and made != self.generation:  # the broker it was made on is gone
                again = self._make(key, fields, max(deadline - time.monotonic(), 0.1))
                if again:
                    return "resubscribed", {"sub": next(t for t, k in self.keys.items() if k == key),
                                            "backlog": again[1], "broker": self.endpoint}
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise MpregError(901, "request_timeout", f"no event for {key} within {timeout} s")
            poller = zmq.Poller()
            poller.register(self.sock, zmq.POLLIN)
            if self.sub is not None:
                poller.register(self.sub, zmq.POLLIN)
            ready = dict(poller.poll(min(left, SILENCE / 4) * 1000))
            if self.sock in ready:
                self._receive()
            if self.sub is not None and self.sub in ready:
                self._event(self.sub.recv_multipart())
            if not ready:
                self.check_broker()
    def _event(self, frames):
        self.heard = time.monotonic()  # events flow: the broker is there
        if len(frames) != 4 or frames[1] != VERSION:
            return
        key, kind = self.keys.get(frames[0].decode()), frames[2].decode()
        if key is None:
            return
        body = msgpack.unpackb(frames[3], strict_map_key=False)
        if kind == "messages":  # a batch: the same as that many `message` events
            self.queues[key].extend(("message", dict(item, sub=key)) for item in body["items"])
        else:
            self.queues[key].append((kind, body))
    def next_message(self, key, timeout=10.0):
        while True:
            kind, body = self.next_event(key, timeout)
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
    parser.add_argument("--broker", default=os.environ.get("MPREG_BROKER", "tcp://127.0.0.1:7400"),
                        help="client endpoint, or a comma-separated list to fail over between (env MPREG_BROKER)")
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
                    if kind in ("lagging", "resubscribed"):
                        print(_json({kind: body}), file=sys.stderr, flush=True)
                    elif kind == "message":
                        print(line(body), flush=True)
                        n += 1
    except MpregError as e:
        print(_json({"error": e.reply}), file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
