#!/usr/bin/env bash
# Soak test: the demo (a release build) on 127.0.0.1 under wrk for N minutes, 10k real
# cookies mixing page views, heartbeats and leaves; RSS sampled every few seconds. It passes
# when RSS stayed flat after warm-up (the last third's peak within 10% of the middle third's)
# and, once the traffic stops, the JSON counts equal a recount of the admin list.
#
#   scripts/soak.sh            # 10 minutes
#   scripts/soak.sh 2          # 2 minutes
#
# Environment: SOAK_COOKIES (default 10000), SOAK_CONNECTIONS (default 16), SOAK_THREADS
# (default 1), SOAK_SAMPLE (seconds between RSS samples, default 5), PORT (default: a free
# one). Needs wrk, curl and python3. Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-10}
cookies=${SOAK_COOKIES:-10000}
connections=${SOAK_CONNECTIONS:-16}
threads=${SOAK_THREADS:-1}
sample=${SOAK_SAMPLE:-5}
for tool in wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "soak: needs $tool" >&2; exit 2; }
done
port=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
base="http://127.0.0.1:$port"

cargo build --release --example whos_online --features axum
bin="${CARGO_TARGET_DIR:-target}/release/examples/whos_online"

work=$(mktemp -d)
server=""
sampler=""
cleanup() {
    [[ -n "$sampler" ]] && kill "$sampler" 2>/dev/null || true
    [[ -n "$server" ]] && kill "$server" 2>/dev/null || true
    [[ -n "$server" ]] && wait "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

PORT=$port nice -n 19 "$bin" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    curl -fs -o /dev/null "$base/" && break
    kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.1
done

# Real cookies: each is what the server issued to a first visit (signed with its key).
python3 - "$port" "$cookies" >"$work/cookies.txt" <<'EOF'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
seen = set()
while len(seen) < n:
    conn.request("GET", "/")
    res = conn.getresponse()
    res.read()
    for name, value in res.getheaders():
        if name.lower() == "set-cookie" and value.startswith("presence_id="):
            seen.add(value.split(";", 1)[0])
for cookie in seen:
    print(cookie)
EOF
echo "soak: $(wc -l <"$work/cookies.txt") cookies from $base, ${minutes} min, $connections connections"

cat >"$work/soak.lua" <<'EOF'
-- 60% page views (a join or activity), 35% heartbeats, 5% leaves, each with a random cookie.
local cookies, n = {}, 0
local pages = { "/", "/topic/1", "/topic/2", "/topic/3" }
local threads = {}
statuses = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("seed", #threads)
end

function init(args)
    for line in io.lines(args[1]) do
        n = n + 1
        cookies[n] = line
    end
    math.randomseed(os.time() * 1000 + seed)
end

function request()
    local headers = { ["Cookie"] = cookies[math.random(n)] }
    local r = math.random(100)
    if r <= 60 then
        return wrk.format("GET", pages[math.random(#pages)], headers)
    elseif r <= 95 then
        return wrk.format("POST", "/presence/heartbeat", headers)
    else
        return wrk.format("POST", "/presence/leave", headers)
    end
end

function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
    local total = {}
    for _, thread in ipairs(threads) do
        local s = thread:get("statuses")
        for status, count in pairs(s) do
            total[status] = (total[status] or 0) + count
        end
    end
    local line = "statuses:"
    for status, count in pairs(total) do
        line = line .. " " .. status .. "=" .. count
    end
    print(line)
    print(string.format("latency: p50 %.2f ms, p99 %.2f ms, max %.2f ms",
        latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
EOF

(
    while kill -0 "$server" 2>/dev/null; do
        echo "$(date +%s) $(awk '/^VmRSS/ {print $2}' "/proc/$server/status")"
        sleep "$sample"
    done
) >"$work/rss.txt" &
sampler=$!

nice -n 19 wrk -t"$threads" -c"$connections" -d"${minutes}m" --timeout 10s \
    -s "$work/soak.lua" "$base" -- "$work/cookies.txt" | tee "$work/wrk.txt"
kill "$sampler" 2>/dev/null || true
sampler=""

# Pending leaves take effect after their grace (2 s); then nothing moves but expiry.
sleep 5

python3 - "$base" "$work/rss.txt" <<'EOF'
import json, re, sys, urllib.request

base, rss_file = sys.argv[1], sys.argv[2]
failed = []

samples = [int(line.split()[1]) for line in open(rss_file) if len(line.split()) == 2]
third = len(samples) // 3
if third < 2:
    failed.append(f"too few RSS samples ({len(samples)}): run longer")
else:
    warm = max(samples[third:2 * third])
    late = max(samples[2 * third:])
    print(f"rss (KiB): first {samples[0]}, start of middle third {samples[third]}, "
          f"middle-third peak {warm}, last-third peak {late}, last {samples[-1]}, "
          f"growth {100.0 * (late - warm) / warm:+.1f}% over {len(samples)} samples")
    if late > warm * 1.10:
        failed.append(f"RSS grew after warm-up: {warm} -> {late} KiB")

def get(path):
    with urllib.request.urlopen(base + path, timeout=30) as res:
        return res.read().decode()

def recount():
    total, cursor = 0, None
    while True:
        page = get("/admin" + (f"?from={cursor}" if cursor else ""))
        total += page.count("<tr><td><code>")
        m = re.search(r'id="next" href="/admin\?from=([^"]+)"', page)
        if not m:
            return total
        cursor = m.group(1)

for attempt in range(5):
    before = json.loads(get("/presence/counts"))["sessions"]
    listed = recount()
    after = json.loads(get("/presence/counts"))["sessions"]
    print(f"counts: sessions {before} (after the recount: {after}), admin list {listed}")
    if before == after:
        break
if not (before == listed == after):
    failed.append(f"counts {before}/{after} but the admin list has {listed}")

if failed:
    print("soak FAILED: " + "; ".join(failed))
    sys.exit(1)
print("soak passed")
EOF
