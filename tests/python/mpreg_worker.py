#!/usr/bin/env python3
"""MPREG worker from docs/PROTOCOL.md (pyzmq + msgpack only); usage in tests/python/README.md."""
import argparse, inspect, json, os, signal, sys, time
import msgpack, zmq

VERSION = b"MPREG/1"

def py_upper(s): return s.upper()
def py_add(a, b): return a + b
def py_fail(msg): raise RuntimeError(msg)

FUNCTIONS = {"py_upper": py_upper, "py_add": py_add, "py_fail": py_fail}

class Stop(Exception):
    """SIGTERM/SIGINT arrived while the worker was waiting."""

def log(**fields):
    print(json.dumps(fields), file=sys.stderr, flush=True)

class Worker:
    def __init__(self, endpoint, name, resources=(), functions=FUNCTIONS, capacity=1):
        self.endpoint, self.name, self.resources = endpoint, name, list(resources)
        self.functions, self.capacity = dict(functions), capacity
        self.ctx, self.sock, self.registered = zmq.Context.instance(), None, False
        self.heartbeat, self.liveness, self.backoff = 1.0, 3, 1.0
        self.stopping = self.waiting = False
    def send(self, kind, body):
        try:
            self.sock.send_multipart([VERSION, kind.encode(), msgpack.packb(body)], zmq.NOBLOCK)
            return True
        except zmq.Again:  # not connected (IMMEDIATE): dropped rather than queued
            return False
    def connect(self):
        """A fresh socket, i.e. a new connection (a new worker to the broker), then register."""
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.connect(self.endpoint)
        self.registered = False
        self.register()
    def register(self):
        sent = self.send("register", {"node": self.name, "functions": sorted(self.functions),
                                      "resources": self.resources, "capacity": self.capacity})
        # Resend every second until `registered`; sooner while the connection is not up yet.
        self.next_register = time.monotonic() + (1.0 if sent else 0.1)
    def idle(self, wait, *args):
        """Blocks in `wait` (sleep or poll), where SIGTERM may interrupt it."""
        self.waiting = True
        try:
            if self.stopping:
                raise Stop
            return wait(*args)
        finally:
            self.waiting = False
    def restart(self, why):
        """Drops the connection and reconnects after a backoff of 1 s doubling to 32 s."""
        log(event="reconnecting", node=self.name, reason=why, backoff_s=self.backoff)
        self.sock.close(linger=0)
        self.sock = None
        self.idle(time.sleep, self.backoff)
        self.backoff = min(self.backoff * 2, 32.0)
        self.connect()
    def run(self):
        self.connect()
        while True:
            now = time.monotonic()
            if self.registered:
                if now - self.last_heard > self.liveness * self.heartbeat:
                    self.restart("broker silent")
                    continue
                if now >= self.next_heartbeat:
                    self.send("heartbeat", {})
                    self.next_heartbeat = now + self.heartbeat
                wake = min(self.next_heartbeat, self.last_heard + self.liveness * self.heartbeat)
            else:
                if now >= self.next_register:
                    self.register()
                wake = self.next_register
            if self.idle(self.sock.poll, max(0.0, wake - time.monotonic()) * 1000 + 1):
                self.handle(self.sock.recv_multipart())
    def handle(self, frames):
        self.last_heard = time.monotonic()  # any message is proof of life
        if len(frames) != 3 or frames[0] != VERSION:
            return log(event="bad_frames", frames=len(frames))
        kind = frames[1].decode("ascii", "replace")
        try:
            body = msgpack.unpackb(frames[2], strict_map_key=False)
        except ValueError as e:
            return log(event="bad_body", type=kind, error=str(e))
        if kind == "registered":
            if not self.registered:
                print(json.dumps({"event": "registered", "node": self.name, "broker": self.endpoint}), flush=True)
            self.registered, self.backoff = True, 1.0
            self.heartbeat, self.liveness = body["heartbeat_ms"] / 1000, body["liveness"]
            self.next_heartbeat = self.last_heard + self.heartbeat
        elif kind == "reconnect":
            self.registered = False
            self.register()
        elif kind == "task":
            self.run_task(body)
        elif kind == "disconnect":
            self.restart(f"broker disconnect: {body.get('reason')}")
        elif kind == "error":
            log(event="broker_error", error=body)
        # `heartbeat`: nothing to do. `cancel`: tasks run one at a time, so it is already done.
    def run_task(self, task):
        tid, fun = task.get("task"), task.get("fun")
        fn = self.functions.get(fun)
        args, kwargs = task.get("args") or [], task.get("kwargs") or {}
        try:
            if fn is None:
                raise LookupError("unknown_function", f"{self.name} does not serve {fun!r}")
            try:
                inspect.signature(fn).bind(*args, **kwargs)
            except TypeError as e:
                raise LookupError("bad_arguments", f"{fun}: {e}")
            try:  # packing here catches results msgpack cannot carry
                body = msgpack.packb({"task": tid, "value": fn(*args, **kwargs)})
            except Exception as e:
                raise LookupError("function_error", str(e) or type(e).__name__)
        except LookupError as e:
            return self.send("failure", {"task": tid, "kind": e.args[0], "message": e.args[1]})
        try:
            self.sock.send_multipart([VERSION, b"result", body], zmq.NOBLOCK)
        except zmq.Again:
            pass  # connection lost: the broker will re-dispatch the task
    def shutdown(self):
        if self.sock is not None:
            self.send("disconnect", {"reason": "worker shutting down"})
            self.sock.close(linger=1000)

def main(argv=None):
    parser = argparse.ArgumentParser(description="MPREG worker (Python, pyzmq + msgpack)")
    parser.add_argument("--broker", default="tcp://127.0.0.1:7401", help="worker endpoint")
    parser.add_argument("--name", default=f"py-{os.getpid()}")
    parser.add_argument("--resources", default="", help="comma-separated resources")
    parser.add_argument("--capacity", type=int, default=1)
    args = parser.parse_args(argv)
    worker = Worker(args.broker, args.name, [r for r in args.resources.split(",") if r], capacity=args.capacity)
    def on_signal(signum, frame):
        worker.stopping = True
        if worker.waiting:
            raise Stop
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run()
    except Stop:
        pass
    worker.shutdown()
    log(event="stopped", node=args.name)
    return 0

if __name__ == "__main__":
    sys.exit(main())
