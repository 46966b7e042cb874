# Turns the JSON lines that scripts/bench collects (one per run of examples/loadgen, one run
# per round of each target × transport × sessions cell) into a markdown table and the ratios.
# Each cell shows the round with the median req/s, and the range over the rounds; a throughput
# ratio is given as the ratio of the medians and, round by round, as the median and range of
# each round's own ratio.
# Usage: jq -sr -f bench/report.jq runs.jsonl

def mib: if . == null then "-" else (. / 1024 * 10 | round / 10 | tostring) end;
def r1: if . == null then "-" else (. * 10 | round / 10 | tostring) end;
def r2: if . == null then "n/a" else (. * 100 | round / 100 | tostring) end;
# {"application/json": 90, "text/event-stream": 10} → "json 90% + event-stream 10%"
def answers: (add // 0) as $all | length as $kinds | to_entries
  | map((.key | sub("^(application|text)/"; "")) + (if $kinds > 1 then " \(.value * 100 / $all | round)%" else "" end))
  | join(" + ");
# A target with `-w1` (one worker thread) follows the same target without it.
def order: {"direct": 0, "edge-stdio": 1, "edge-sse": 2, "edge-pool1": 2.5, "edge-pool4": 3, "edge-http": 4,
  "relay": 4.5, "relay-http": 4.6, "sg-http": 5, "sg-ws": 6, "mcp-proxy": 7}[.target | sub("-w1$"; "")] as $o
  | ($o // 9) + (if .target | endswith("-w1") then 0.2 else 0 end);
# The mcp-edge targets of the run, and the relays, in the table's order.
def edges: [.[] | .target | select(startswith("edge-") or startswith("relay"))] | unique | sort_by({target: .} | order);
# The watched process and what is behind it: its child processes, or the upstream server.
def all_cpu: if .watch.gateway then .watch.gateway.tree_cpu_us_per_call + (.watch.backend.tree_cpu_us_per_call // 0) else null end;
def all_pss: if .watch.gateway then .watch.gateway.tree_pss_kib + (.watch.backend.tree_pss_kib // 0) else null end;
def errors: "\(.errors)" + if .first_error then " (\(.first_error | .[0:80] | gsub("\\|"; "/") | gsub("\n"; " ")))" else "" end;

def medians: group_by([.target, .transport, .sessions])
  | map(sort_by(.req_per_s // 0) as $g | $g[$g | length / 2 | floor] + {
      rounds: ($g | length), rps_min: ($g[0].req_per_s // 0), rps_max: ($g[-1].req_per_s // 0),
      errors: ($g | map(.errors) | add), first_error: ([$g[].first_error | select(.)] | first)});
def at($t; $tr; $n): map(select(.target == $t and .transport == $tr and .sessions == $n))[0];
# Throughput ÷ direct round by round (each round runs direct and the target a few seconds
# apart, so a machine that speeds up or slows down between rounds moves both): the sorted
# ratios of the rounds that ran both.
def paired($t; $n): [.[] | select(.transport == "http" and .sessions == $n and (.target == "direct" or .target == $t))]
  | group_by(.round) | map(select(length == 2 and .[0].round != null)
  | (map(select(.target == $t))[0].req_per_s) / (map(select(.target == "direct"))[0].req_per_s)) | sort;

. as $runs | medians | sort_by(order, .transport, .sessions) as $rows
| ($rows | map(.sessions) | if index(32) then 32 else max end) as $n
| at("direct"; "http"; $n) as $d
| ($rows | edges) as $edges
| "| target | transport | answers | sessions | req/s | req/s range | p50 µs | p90 µs | p99 µs | errors | client CPU µs/call | gateway CPU µs/call | gateway+backend CPU µs/call | gateway peak RSS MiB | gateway+backend PSS MiB |",
  "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
  ($rows[] | "| \(.target) | \(.transport) | \(.answers // {} | answers) | \(.sessions) | \(.req_per_s // 0 | round) | \(.rps_min | round)–\(.rps_max | round) | \(.p50_us // "-") | \(.p90_us // "-") | \(.p99_us // "-") | \(errors) | \(.client_cpu_us_per_call | r1) | \(.watch.gateway.cpu_us_per_call | r1) | \(all_cpu | r1) | \(.watch.gateway.vmhwm_kib | mib) | \(all_pss | mib) |"),
  "",
  "Ratios (\($n) sessions unless stated; medians of \($rows | map(.rounds) | max) rounds):",
  ($edges[] as $t | at($t; "http"; $n) // empty | select($d != null)
    | ($runs | paired($t; $n)) as $p
    | "- throughput, \($t) ÷ direct (Streamable HTTP): \(.req_per_s / $d.req_per_s | r2)"
      + if ($p | length) > 1 then "; round by round \($p[$p | length / 2 | floor] | r2) (\($p[0] | r2)–\($p[-1] | r2))" else "" end),
  (["http", "ws"][] as $tr | at("direct"; $tr; 1) as $b | $edges[] as $t
    | at($t; $tr; 1) // empty | select(.p50_us != null and $b.p50_us != null)
    | "- added p50 latency at 1 session, \($t) vs direct (\($tr)): \(.p50_us - $b.p50_us) µs (\(.p50_us) vs \($b.p50_us))"),
  ($edges[] as $t | at($t; "http"; $n) // empty | select(.watch.gateway and $d.watch.gateway)
    | "- gateway CPU per call ÷ example-server CPU per call, \($t) (Streamable HTTP): \(.watch.gateway.cpu_us_per_call / $d.watch.gateway.cpu_us_per_call | r2) (\(.watch.gateway.cpu_us_per_call) ÷ \($d.watch.gateway.cpu_us_per_call) µs)"),
  (at("edge-http"; "http"; $n).watch.backend // empty
    | "- the upstream example server behind edge-http, same run: \(.cpu_us_per_call) µs CPU per call"),
  (["relay", "relay-http"][] as $relay | ["http", "ws"][] as $tr | at($relay; $tr; 1) as $r
    | at("edge-http"; $tr; 1) // empty | select($r.p50_us != null and .p50_us != null)
    | "- added p50 latency at 1 session, edge-http vs \($relay) (\($tr)): \(.p50_us - $r.p50_us) µs (\(.p50_us) vs \($r.p50_us))"),
  (["relay", "relay-http"][] as $relay | at($relay; "http"; $n) as $r | at("edge-http"; "http"; $n) // empty
    | select($r.watch.gateway and .watch.gateway)
    | "- gateway CPU per call ÷ \($relay) CPU per call (Streamable HTTP): \(.watch.gateway.cpu_us_per_call / $r.watch.gateway.cpu_us_per_call | r2) (\(.watch.gateway.cpu_us_per_call) ÷ \($r.watch.gateway.cpu_us_per_call) µs)")
