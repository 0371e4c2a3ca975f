#!/usr/bin/env bash
# Runs the criterion benches and prints, per group, each benchmark's median time per element
# and how many times faster `presence_*` is than each baseline of the same group (ratios
# come from one run, so machine noise mostly cancels). With --runs N the benches run N times
# and the table shows the median of the per-run figures and ratios.
#
# usage: scripts/bench-summary.sh [--runs N] [--filter F] [--no-run] [bench ...]
#   bench      touch, counts, reap, layer (the default is all four)
#   --filter F only benchmarks whose id contains F (criterion's filter), e.g. 2_threads
#   --no-run   only summarise what target/criterion holds from the last run
#   --rows P   also keep the raw per-run figures (TSV: run, group, benchmark, ns/element) in P
# Needs jq. The memory and map benches print their own tables:
#   cargo bench -p presence-tracker-testbed --bench memory
#   cargo bench -p presence-tracker-testbed --bench map
set -euo pipefail

runs=1
run=1
filter=()
keep_rows=""
benches=()
while (($#)); do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --no-run) run=0; shift ;;
        --filter) filter=("$2"); shift 2 ;;
        --rows) keep_rows="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) benches+=("$1"); shift ;;
    esac
done
((${#benches[@]})) || benches=(touch counts reap layer)
command -v jq >/dev/null || { echo "bench-summary: jq is required" >&2; exit 1; }

cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
crit="$target/criterion"
rows="$(mktemp)"
trap 'rm -f "$rows"' EXIT

# One TSV row per benchmark of the last run: run, group, function, ns per element.
collect() {
    local r="$1" f
    for f in "$crit"/*/*/new/benchmark.json; do
        [[ -e "$f" ]] || continue
        local dir; dir="$(dirname "$f")"
        jq -r --arg r "$r" --slurpfile est "$dir/estimates.json" '
            (.throughput.Elements // 1) as $n
            | [$r, .group_id, .function_id, ($est[0].median.point_estimate / $n)] | @tsv' "$f"
    done >>"$rows"
}

for ((i = 1; i <= runs; i++)); do
    if ((run)); then
        # Old results would mix into this run's table.
        rm -rf "$crit"
        for b in "${benches[@]}"; do
            cargo bench --quiet -p presence-tracker-testbed --bench "$b" -- --noplot ${filter[@]+"${filter[@]}"} >&2
        done
    fi
    collect "$i"
done
[[ -z "$keep_rows" ]] || cp "$rows" "$keep_rows"

# Median over runs of each figure and of each ratio (baseline time / ours time, > 1 means we
# are faster). The groups' `presence_*` entry is "ours".
awk -F'\t' '
function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function human(ns) {
    if (ns >= 1e6) return sprintf("%.2f ms", ns / 1e6)
    if (ns >= 1e3) return sprintf("%.2f us", ns / 1e3)
    return sprintf("%.1f ns", ns)
}
{
    key = $2 SUBSEP $3
    t[key] = t[key] " " $4
    time[$1, key] = $4
    if (!(key in seen)) { seen[key] = 1; order[++k] = key }
    if ($3 ~ /^presence_/ && !(($1, $2) in ours)) ours[$1, $2] = $3
    runs[$1] = 1
}
END {
    printf "%-45s %-40s %12s %10s\n", "group", "benchmark", "per elem", "ours/x"
    for (i = 1; i <= k; i++) {
        split(order[i], p, SUBSEP); g = p[1]; f = p[2]
        ratios = ""
        for (r in runs) {
            if (!((r, g) in ours) || !((r, order[i]) in time)) continue
            o = time[r, g SUBSEP ours[r, g]]
            if (o > 0) ratios = ratios " " time[r, order[i]] / o
        }
        ratio = (f ~ /^presence_/ || ratios == "") ? "" : sprintf("%.2fx", median(ratios))
        printf "%-45s %-40s %12s %10s\n", g, f, human(median(t[order[i]])), ratio
    }
}' "$rows"
