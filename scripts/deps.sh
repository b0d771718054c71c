# Sourced by the scripts: installs what building and testing MPREG needs when it is missing.
# System: libzmq3-dev (libzmq with CURVE), pkg-config and chromium (the dashboard test).
# Python: pyzmq and msgpack for the conformance tests. Needs root (or sudo) only when something
# is actually missing.

mpreg_need_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "missing system packages and no root: install libzmq3-dev pkg-config" >&2; return 1
    fi
}

mpreg_install_system_deps() {
    if ! pkg-config --exists libzmq 2>/dev/null; then
        echo "installing libzmq3-dev pkg-config ..." >&2
        mpreg_need_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive mpreg_need_root apt-get install -y -qq libzmq3-dev pkg-config
    fi
    # Headless Chromium renders the broker's dashboard in tests/tests/dashboard.rs (the test
    # says it is skipped when this is missing); `script` (util-linux) gives the CLI a terminal
    # in tests/tests/trace.rs.
    if ! command -v chromium >/dev/null 2>&1; then
        echo "installing chromium ..." >&2
        mpreg_need_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive mpreg_need_root apt-get install -y -qq chromium
    fi
}

mpreg_install_python_deps() {
    local py="${PYTHON:-python3}"
    if ! "$py" -c 'import zmq, msgpack' 2>/dev/null; then
        echo "installing pyzmq msgpack ..." >&2
        "$py" -m pip install -q pyzmq msgpack || "$py" -m pip install -q --break-system-packages pyzmq msgpack
    fi
}
