#!/usr/bin/env python3
"""Checks this Python msgpack encoding against the golden fixtures (PROTOCOL.md section 12).

For every protocol/fixtures/<direction>.<type>[_<variant>].json: the frames are
["MPREG/1", <type>], msgpack.packb(body) equals the .msgpack bytes exactly, and the .msgpack
bytes decode to the JSON body. Exits 0 when every fixture passes. Usage: check_fixtures.py [FIXTURE_DIR]
"""
import glob, json, os, sys
import msgpack

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "protocol", "fixtures")


def from_json(value):
    """The fixture's JSON as msgpack values: {"$bin": "<hex>"} is binary (bin)."""
    if isinstance(value, dict):
        if list(value) == ["$bin"]:
            return bytes.fromhex(value["$bin"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def check(directory=DEFAULT_DIR):
    """Returns a list of failure strings (empty: all good) and the number of fixtures checked."""
    failures, paths = [], sorted(glob.glob(os.path.join(directory, "*.json")))
    for path in paths:
        name = os.path.basename(path)[: -len(".json")]
        with open(path) as f:
            fixture = json.load(f)
        with open(path[: -len(".json")] + ".msgpack", "rb") as f:
            golden = f.read()
        stem = name.split(".", 1)[1]  # <type> or <type>_<variant>: error_cycle samples `error`
        frames = fixture["frames"]
        if len(frames) != 2 or frames[0] != "MPREG/1" or not (stem == frames[1] or stem.startswith(frames[1] + "_")):
            failures.append(f"{name}: frames {frames} do not match the file name")
        body = from_json(fixture["body"])
        if msgpack.packb(body) != golden:
            failures.append(f"{name}: encoding differs: {msgpack.packb(body).hex()} != {golden.hex()}")
        if msgpack.unpackb(golden, strict_map_key=False) != body:
            failures.append(f"{name}: decoding differs")
    if not paths:
        failures.append(f"no fixtures in {directory}")
    return failures, len(paths)


if __name__ == "__main__":
    failures, n = check(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DIR)
    for failure in failures:
        print("FAIL", failure)
    print(f"{n - len({f.split(':')[0] for f in failures})}/{n} fixtures match")
    sys.exit(1 if failures else 0)
