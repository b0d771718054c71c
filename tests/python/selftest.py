#!/usr/bin/env python3
"""Conformance run against a live broker, using the Python client and worker of this directory.

    selftest.py --client tcp://127.0.0.1:7400 --worker tcp://127.0.0.1:7401

Needs a running broker with at least one worker (the Rust mpreg-node) serving `echo` (returns
its argument) and `echos` (returns its arguments as a list). Starts one mpreg_worker.py against
--worker (unless --no-python-worker) to check cross-language plans. Prints one line per check
and exits 0 only if every check passed.
"""
import argparse, json, os, subprocess, sys, time, traceback
import msgpack, zmq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from check_fixtures import check as check_fixtures  # noqa: E402
from mpreg_client import Client, MpregError  # noqa: E402

SEED = [
    {"name": "|first", "fun": "echo", "args": ["hi there!"]},
    {"name": "|second", "fun": "echo", "args": ["|first"]},
    {"name": "|third", "fun": "echos", "args": ["|first", "|second", "AND ME TOO"]},
]
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def eq(got, want, what="result"):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def fails(client, steps, code, **options):
    """Runs a plan that must fail with `code`; returns the error reply."""
    try:
        got = client.plan(steps, **options)
    except MpregError as e:
        eq(e.code, code, f"error code ({e.kind}: {e.message})")
        return e.reply
    raise AssertionError(f"expected error {code}, got result {got!r}")


def raw(endpoint, frames, timeout=5.0):
    """Sends raw frames on a fresh DEALER; returns (type, body) of the reply."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        if not sock.poll(timeout * 1000):
            raise AssertionError(f"no reply to {frames[:2]} within {timeout} s")
        reply = sock.recv_multipart()
        eq(len(reply), 3, "reply frame count")
        eq(reply[0], b"MPREG/1", "version frame")
        return reply[1].decode(), msgpack.unpackb(reply[2], strict_map_key=False)
    finally:
        sock.close()


@check
def golden_fixtures(c, ctx):
    failures, n = check_fixtures()
    if failures:
        raise AssertionError("; ".join(failures))
    if n < 23:
        raise AssertionError(f"only {n} fixtures")


@check
def ping_and_status(c, ctx):
    broker = c.ping()
    status = c.status()
    eq(status["broker"], broker, "status broker name")
    funs = {f for w in status["workers"] for f in w["functions"]}
    if not {"echo", "echos"} <= funs:
        raise AssertionError(f"no worker serves echo and echos: {status['workers']}")
    for key in ("max_message_bytes", "max_depth", "max_steps", "max_name_bytes", "max_locs"):
        if key not in status["limits"]:
            raise AssertionError(f"status limits lack {key}")


@check
def seed_plan(c, ctx):
    eq(c.plan(SEED), {"|third": ["hi there!", "hi there!", "AND ME TOO"]})


@check
def seed_plan_without_second(c, ctx):
    steps = SEED[:2] + [dict(SEED[2], args=["|first", "AND ME TOO"])]
    eq(c.plan(steps), {"|second": "hi there!", "|third": ["hi there!", "AND ME TOO"]})


@check
def all_results_and_progress(c, ctx):
    eq(c.plan(SEED, all_results=True, progress=True),
       {"|first": "hi there!", "|second": "hi there!", "|third": ["hi there!", "hi there!", "AND ME TOO"]})
    events = c.last_progress
    eq(sorted(e["step"] for e in events), ["|first", "|second", "|third"], "progress steps")
    eq([e["step"] for e in events][0], "|first", "first progress event")
    for e in events:
        for key in ("fun", "worker", "result", "elapsed_us"):
            if key not in e:
                raise AssertionError(f"progress event lacks {key}: {e}")


@check
def field_path_reference(c, ctx):
    steps = [
        {"name": "a", "fun": "echo", "args": [{"x": [10, 20], "m": {"k": "v"}}]},
        {"name": "b", "fun": "echo", "args": ["a.x.1"]},
        {"name": "c", "fun": "echos", "args": [{"deep": ["a.m.k", {"a": "a.x.0"}]}, "say a", "zzz.q"],
         "kwargs": {}},
    ]
    eq(c.plan(steps), {"b": 20, "c": [{"deep": ["v", {"a": 10}]}, "say a", "zzz.q"]})


@check
def unresolved_reference_206(c, ctx):
    steps = [{"name": "a", "fun": "echo", "args": [{"x": [10, 20]}]},
             {"name": "b", "fun": "echo", "args": ["a.y"]}]
    reply = fails(c, steps, 206)
    eq(reply.get("kind"), "unresolved_reference", "kind")
    eq(reply.get("step"), "b", "step")
    eq(reply.get("path"), "a.y", "path")
    eq(reply.get("partial"), {"a": {"x": [10, 20]}}, "partial")
    fails(c, [steps[0], {"name": "b", "fun": "echo", "args": ["a.x.2"]}], 206)


@check
def cycle_204(c, ctx):
    steps = [{"name": "a", "fun": "echo", "args": ["b"]},
             {"name": "b", "fun": "echo", "args": [["c"]]},
             {"name": "c", "fun": "echo", "args": [{"k": "a.z"}]},
             {"name": "d", "fun": "echo", "args": ["a"]}]
    reply = fails(c, steps, 204)
    eq(reply.get("kind"), "plan_cycle", "kind")
    cycle = reply.get("cycle") or []
    eq(sorted(cycle), ["a", "b", "c"], "cycle members")
    order = {n: i for i, n in enumerate(cycle)}  # each step references the next
    refs = {"a": "b", "b": "c", "c": "a"}
    for n, i in order.items():
        eq(cycle[(i + 1) % len(cycle)], refs[n], f"step after {n} in the cycle")
    eq(fails(c, [{"name": "s", "fun": "echo", "args": ["s"]}], 204).get("cycle"), ["s"], "self cycle")


@check
def no_route_300(c, ctx):
    reply = fails(c, [{"name": "x", "fun": "no_such_function", "args": [], "locs": ["nowhere"]}], 300)
    eq(reply.get("kind"), "no_route", "kind")
    eq(reply.get("fun"), "no_such_function", "fun")
    eq(reply.get("locs"), ["nowhere"], "locs")
    fails(c, [{"name": "x", "fun": "echo", "args": [1], "locs": ["no-such-resource"]}], 300)


@check
def validation_errors(c, ctx):
    eq(c.plan([]), {}, "empty plan")
    fails(c, [{"name": "", "fun": "echo"}], 201)
    fails(c, [{"name": "a", "fun": "echo"}, {"name": "a", "fun": "echo"}], 202)
    fails(c, [{"name": "a.b", "fun": "echo"}], 203)
    fails(c, [{"name": "a", "fun": ""}], 200)


@check
def twenty_concurrent_plans(c, ctx):
    plans = [[{"name": "p", "fun": "echo", "args": [{"n": i}]},
              {"name": "q", "fun": "echos", "args": ["p.n", f"plan-{i}"]}] for i in range(20)]
    results = c.plan_many(plans)
    for i, got in enumerate(results):
        if isinstance(got, Exception):
            raise AssertionError(f"plan {i}: {got}")
        eq(got, {"q": [i, f"plan-{i}"]}, f"plan {i}")


@check
def unknown_message_type_102(c, ctx):
    kind, body = raw(ctx.client, [b"MPREG/1", b"bogus", msgpack.packb({"id": 4242})])
    eq((kind, body.get("code"), body.get("kind"), body.get("id")),
       ("error", 102, "unknown_message_type", 4242), "with id")
    kind, body = raw(ctx.client, [b"MPREG/1", b"bogus", msgpack.packb([1, 2])])
    eq((kind, body.get("code"), body.get("id")), ("error", 102, None), "non-map body")
    kind, body = raw(ctx.client, [b"MPREG/1", b"register", msgpack.packb({"id": 7, "node": "x"})])
    eq((body.get("code"), body.get("id")), (102, 7), "worker message on the client socket")


@check
def frame_and_body_errors(c, ctx):
    _, body = raw(ctx.client, [b"MPREG/0", b"ping", msgpack.packb({"id": 5})])
    eq((body.get("code"), body.get("kind"), body.get("id")), (101, "unsupported_version", 5), "version")
    _, body = raw(ctx.client, [b"MPREG/1", b"ping"])
    eq((body.get("code"), body.get("kind")), (100, "malformed_message"), "two frames")
    _, body = raw(ctx.client, [b"MPREG/1", b"plan", msgpack.packb({"id": 6, "steps": 5})])
    eq((body.get("code"), body.get("id"), body.get("path")), (103, 6, "steps"), "bad field")
    _, body = raw(ctx.client, [b"MPREG/1", b"ping", b"\xc1"])
    eq((body.get("code"), body.get("id")), (103, None), "invalid msgpack")
    deep = {"id": 8, "steps": [{"name": "a", "fun": "echo", "args": [json.loads("[" * 70 + "]" * 70)]}]}
    _, body = raw(ctx.client, [b"MPREG/1", b"plan", msgpack.packb(deep)])
    eq((body.get("code"), body.get("id")), (105, 8), "nesting")
    limit = c.status()["limits"]["max_message_bytes"]
    if limit <= 64 * 1024 * 1024:  # a body just over the limit: typed error, not a dropped connection
        big = {"id": 10, "steps": [{"name": "a", "fun": "echo", "args": [b"x" * limit]}]}
        _, body = raw(ctx.client, [b"MPREG/1", b"plan", msgpack.packb(big)], timeout=20)
        eq((body.get("code"), body.get("kind")), (104, "message_too_large"), "oversized body")
    _, body = raw(ctx.client, [b"MPREG/1", b"ping", msgpack.packb({"id": 9, "extra": [1, {"x": None}]})])
    eq((body.get("id"), body.get("max_message_bytes")), (9, limit), "unknown fields are ignored")


@check
def step_failed_301(c, ctx):
    if "fail" not in {f for w in c.status()["workers"] for f in w["functions"]}:
        raise Skip("no worker serves fail")
    steps = [{"name": "a", "fun": "echo", "args": ["went wrong"]}, {"name": "b", "fun": "fail", "args": ["a"]}]
    reply = fails(c, steps, 301)
    eq((reply.get("kind"), reply.get("step"), reply.get("fun"), reply.get("cause"), reply.get("partial")),
       ("step_failed", "b", "fail", "function_error", {"a": "went wrong"}), "failure")
    if not reply.get("worker") or "went wrong" not in reply.get("message", ""):
        raise AssertionError(f"worker or message missing: {reply}")
    eq(fails(c, [{"name": "e", "fun": "echo", "args": [1, 2]}], 301).get("cause"), "bad_arguments", "cause")


@check
def cancel_duplicate_id_and_deadlines(c, ctx):
    funs = {f for w in c.status()["workers"] for f in w["functions"]}
    if "sleep" not in funs:
        raise Skip("no worker serves sleep")
    started = time.monotonic()
    try:
        c.call("sleep", 200, None)  # the node's sleep(ms, value)
    except MpregError as e:
        raise Skip(f"sleep(200) failed: {e}")
    if not 0.15 < time.monotonic() - started < 2:
        raise Skip("sleep does not take milliseconds")
    steps = [{"name": "a", "fun": "echo", "args": ["A"]}, {"name": "b", "fun": "sleep", "args": [1500, "a"]}]
    rid = c.send_plan(steps)
    time.sleep(0.3)
    c.sock.send_multipart([b"MPREG/1", b"plan", msgpack.packb({"id": rid, "steps": []})])
    kind, body = c.wait(rid)  # the duplicate's refusal; the first plan runs on
    eq((kind, body.get("code"), body.get("id")), ("error", 401, rid), "duplicate id")
    c.pending[rid] = "plan"
    c.sock.send_multipart([b"MPREG/1", b"cancel", msgpack.packb({"id": rid})])
    kind, body = c.wait(rid)
    eq((kind, body.get("code"), body.get("kind"), body.get("partial")),
       ("error", 305, "cancelled", {"a": "A"}), "cancel")
    fails(c, steps, 303, deadline_ms=300)
    reply = fails(c, [steps[0], dict(steps[1], timeout_ms=300)], 304)
    eq((reply.get("step"), reply.get("fun")), ("b", "sleep"), "step timeout")


@check
def python_worker_cross_language(c, ctx):
    if not ctx.py_name:
        raise Skip("--no-python-worker")
    steps = [{"name": "e", "fun": "echo", "args": ["hi there!"]},
             {"name": "u", "fun": "py_upper", "args": ["e"], "locs": ["a", "b"]},
             {"name": "s", "fun": "py_add", "kwargs": {"a": 2, "b": 3}}]
    eq(c.plan(steps), {"u": "HI THERE!", "s": 5})
    reply = fails(c, [{"name": "e", "fun": "echo", "args": ["boom x"]},
                      {"name": "f", "fun": "py_fail", "args": ["e"], "locs": ["a"]},
                      {"name": "g", "fun": "echo", "args": ["f"]}], 301)
    eq((reply.get("kind"), reply.get("step"), reply.get("fun"), reply.get("cause")),
       ("step_failed", "f", "py_fail", "function_error"), "failure")
    if "boom x" not in reply.get("message", ""):
        raise AssertionError(f"the worker's message is not in the error: {reply.get('message')!r}")
    if reply.get("partial", {}).get("e") != "boom x":
        raise AssertionError(f"partial lacks e: {reply.get('partial')}")
    reply = fails(c, [{"name": "f", "fun": "py_add", "args": [1]}], 301)
    eq(reply.get("cause"), "bad_arguments", "cause")
    fails(c, [{"name": "f", "fun": "py_upper", "args": ["x"], "locs": ["gpu"]}], 300)


@check
def cli(c, ctx):
    client = [sys.executable, os.path.join(HERE, "mpreg_client.py"), "--broker", ctx.client]
    out = subprocess.run(client + ["call", "echos", '"x"', "[1,2]", "{\"k\":null}"], capture_output=True, text=True)
    eq((out.returncode, out.stdout.strip()), (0, '["x", [1, 2], {"k": null}]'), "call")
    out = subprocess.run(client + ["call", "no_such_function", "1"], capture_output=True, text=True)
    eq(out.returncode, 1, "exit code of a failed call")
    eq(json.loads(out.stderr)["error"]["code"], 300, "stderr error")


class Skip(Exception):
    pass


def start_python_worker(endpoint, name):
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "mpreg_worker.py"), "--broker", endpoint,
                             "--name", name, "--resources", "a,b"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    event = json.loads(line) if line else {}
    if event.get("event") != "registered":
        proc.kill()
        raise SystemExit(f"mpreg_worker.py did not register: {line!r}")
    return proc


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", required=True, help="the broker's client endpoint")
    parser.add_argument("--worker", required=True, help="the broker's worker endpoint")
    parser.add_argument("--no-python-worker", action="store_true")
    args = parser.parse_args()
    ctx = argparse.Namespace(client=args.client, worker=args.worker, py_name=None)
    proc = None
    if not args.no_python_worker:
        ctx.py_name = f"selftest-py-{os.getpid()}"
        proc = start_python_worker(args.worker, ctx.py_name)
    failed = []
    try:
        with Client(args.client) as client:
            for fn in CHECKS:
                started = time.monotonic()
                try:
                    fn(client, ctx)
                    print(f"ok    {fn.__name__} ({(time.monotonic() - started) * 1000:.0f} ms)", flush=True)
                except Skip as e:
                    print(f"skip  {fn.__name__}: {e}", flush=True)
                except Exception as e:  # a check failed: report it and go on
                    failed.append(fn.__name__)
                    detail = str(e) if isinstance(e, (AssertionError, MpregError)) else traceback.format_exc()
                    print(f"FAIL  {fn.__name__}: {detail}", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            if proc.wait(timeout=5) != 0:
                failed.append("python worker exit code")
    print(f"{len(CHECKS) - len(failed)}/{len(CHECKS)} checks passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
