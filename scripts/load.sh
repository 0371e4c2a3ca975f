#!/usr/bin/env bash
# Requests/s of one route with and without PresenceLayer, measured in one run by wrk on
# loopback against examples/load_target.rs (a trivial handler, so the layer's cost is as
# visible as it gets). The tracked route is hit by 256 returning visitors: every request
# carries one of their signed presence cookies, obtained from the server first; the
# untracked route gets the same Cookie headers so both parse the same bytes.
#
# With two or more CPUs the server is pinned to one CPU and wrk to another, so that they do
# not steal each other's time and the server's CPU is what limits the rate. Throughput on
# a shared VM drifts by more than the layer costs, so the routes are measured in many
# short rounds, alternating which goes first, and the figure is the median of the rounds'
# ratios.
#
# Usage: scripts/load.sh [duration=2s] [connections=32] [threads=1]
# Env:   PORT (default 3001), ROUNDS (default 15), PIN (default 1: pin when nproc >= 2)
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-2s}
connections=${2:-32}
threads=${3:-1}
port=${PORT:-3001}
rounds=${ROUNDS:-15}
server_cpu=()
client_cpu=()
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  server_cpu=(taskset -c 1)
  client_cpu=(taskset -c 0)
fi
base="http://127.0.0.1:$port"

command -v wrk >/dev/null || { echo "wrk is not installed" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is not installed" >&2; exit 1; }

bin=$(cargo build --release --example load_target --features axum \
        --message-format=json-render-diagnostics \
      | grep -o '"executable":"[^"]*load_target[^"]*"' | tail -n1 | cut -d'"' -f4)
[ -x "$bin" ] || { echo "could not build examples/load_target.rs" >&2; exit 1; }

PORT=$port "${server_cpu[@]}" "$bin" >/dev/null &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

for _ in $(seq 100); do
  curl -fs -o /dev/null "$base/hot" && break
  sleep 0.1
done

# 256 returning visitors: each gets a real signed cookie from the server first, and wrk
# cycles through them (one visitor at 70k requests/s would measure one lock, not the layer).
lua=$(mktemp)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -f "$lua"' EXIT
{
  echo "local cookies = {"
  for _ in $(seq 256); do
    c=$(curl -fsi "$base/tracked/hot" | tr -d '\r' \
        | sed -n 's/^[Ss]et-[Cc]ookie: \(presence_id=[^;]*\).*/\1/p' | head -n1)
    [ -n "$c" ] || { echo "no presence cookie issued" >&2; exit 1; }
    echo "  \"$c\","
  done
  echo "}"
  echo "local n = 0"
  echo "request = function()"
  echo "  n = n % #cookies + 1"
  echo "  return wrk.format(nil, nil, { Cookie = cookies[n] })"
  echo "end"
} > "$lua"

rps() {
  "${client_cpu[@]}" wrk -t"$threads" -c"$connections" -d"$duration" -s "$lua" "$1" \
    | awk '/^Requests\/sec:/ { print $2 }'
}

pinning="unpinned"
[ ${#server_cpu[@]} -gt 0 ] && pinning="server on CPU 1, wrk on CPU 0"
echo "wrk -t$threads -c$connections -d$duration x $rounds rounds, $(nproc) CPUs, $pinning"
# Warm up both routes (connection setup, allocator, page tables).
"${client_cpu[@]}" wrk -t"$threads" -c"$connections" -d2s -s "$lua" "$base/hot" >/dev/null
"${client_cpu[@]}" wrk -t"$threads" -c"$connections" -d2s -s "$lua" "$base/tracked/hot" >/dev/null

results=()
# Alternate which route goes first: throughput drifts during a run on a shared machine.
for round in $(seq "$rounds"); do
  if (( round % 2 )); then
    plain=$(rps "$base/hot")
    tracked=$(rps "$base/tracked/hot")
  else
    tracked=$(rps "$base/tracked/hot")
    plain=$(rps "$base/hot")
  fi
  results+=("$round $plain $tracked")
done
printf '%s\n' "${results[@]}" | awk '
  { printf "round %2d: without layer %8.0f req/s   with layer %8.0f req/s   ratio %.3f\n", $1, $2, $3, $3 / $2
    p += $2; t += $3 }
  END { printf "mean:     without layer %8.0f req/s   with layer %8.0f req/s   ratio %.3f\n", p / NR, t / NR, t / p }'
printf '%s\n' "${results[@]}" | awk '{ printf "%.4f\n", $3 / $2 }' | sort -n | awk '
  { r[NR] = $1 }
  END { printf "median of the rounds'"'"' ratios: %.3f\n", NR % 2 ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }'
