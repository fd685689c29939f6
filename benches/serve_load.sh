#!/usr/bin/env bash
# Load test of `wgfer serve`: a real load generator (wrk, from another
# process) with CONNECTIONS concurrent clients posting one 48x48 face
# (?detect=false) for SECONDS, against the server with dynamic batching and
# against the batch-of-one baseline (--max-batch 1). Prints wrk's figures
# (requests/s, latency percentiles) and the server's batch summary for each.
#
#   benches/serve_load.sh [SECONDS] [CONNECTIONS]      (defaults: 10 32)
#
# Needs wrk (Debian/Ubuntu: apt-get install wrk) and python3 (standard
# library only, to write the face PNG from ../shared/data/emotion-sample.csv).
# Not a test: the figures depend on the machine and on what else runs on it.
set -euo pipefail

cd "$(dirname "$0")/.."
duration=${1:-10}
connections=${2:-32}
bin=target/release/wgfer
csv=../shared/data/emotion-sample.csv

command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
[ -f "$csv" ] || { echo "needs $csv" >&2; exit 1; }
cargo build --release --quiet

work=$(mktemp -d)
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The first face of the sample as a 48x48 gray PNG (zlib + struct only).
python3 - "$csv" "$work/face.png" <<'EOF'
import struct, sys, zlib
row = open(sys.argv[1]).read().splitlines()[1]
pixels = bytes(int(v) for v in row.split(",", 1)[1].split())
assert len(pixels) == 48 * 48
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
raw = b"".join(b"\0" + pixels[y * 48:(y + 1) * 48] for y in range(48))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 48, 48, 8, 0, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
open(sys.argv[2], "wb").write(png)
EOF

cat > "$work/post.lua" <<EOF
local f = assert(io.open("$work/face.png", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "image/png"
EOF

# Start the server with the given flags; wait for its address.
start_server() {
    "$bin" serve --port 0 --quiet "$@" 2>"$work/server.log" &
    server=$!
    for _ in $(seq 600); do
        url=$(sed -n 's/^listening on //p' "$work/server.log")
        [ -n "$url" ] && return 0
        kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "the server did not start" >&2
    exit 1
}

stop_server() {
    kill -TERM "$server"
    wait "$server" || true
    server=""
    grep '^served' "$work/server.log" || true
}

for flags in "--max-batch 32 --max-wait-ms 5" "--max-batch 1"; do
    echo "=== wgfer serve $flags: $connections connections, ${duration} s"
    # shellcheck disable=SC2086
    start_server $flags
    # A short warm-up, then the measured run.
    wrk -t2 -c"$connections" -d2s -s "$work/post.lua" "$url/predict?detect=false" >/dev/null
    wrk -t2 -c"$connections" -d"${duration}s" --timeout 30s --latency -s "$work/post.lua" \
        "$url/predict?detect=false"
    stop_server
done
