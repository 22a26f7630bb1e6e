-- wrk script: send pre-generated raw HTTP requests, each at most once.
--
-- BENCH_REQUESTS names a file of records "<byte length>\n<raw HTTP request>".
-- Thread k of n (BENCH_THREADS = n, the -t value) sends records k, k+n, k+2n, ...
-- in order, so which bodies were sent is known from the per-thread counts. A thread
-- that runs out starts again from its first record and counts a wrap: the report
-- flags it, because a reused body only measures the duplicate path.
-- done() prints one line "BENCH_JSON {...}" for bench/run.py to read.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local nthreads = tonumber(os.getenv("BENCH_THREADS"))
  local f = assert(io.open(os.getenv("BENCH_REQUESTS"), "rb"))
  reqs = {}
  local i = 0
  while true do
    local line = f:read("*l")
    if not line then break end
    local raw = f:read(tonumber(line))
    if i % nthreads == tid then reqs[#reqs + 1] = raw end
    i = i + 1
  end
  f:close()
  idx, sent, wraps = 0, 0, 0
end

function request()
  idx = idx + 1
  if idx > #reqs then
    idx, wraps = 1, wraps + 1
  end
  sent = sent + 1
  return reqs[idx]
end

function done(summary, latency, requests)
  local per_thread = {}
  local wrapped = 0
  for _, t in ipairs(threads) do
    per_thread[#per_thread + 1] = string.format("[%d,%d]", t:get("tid"), t:get("sent"))
    wrapped = wrapped + t:get("wraps")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f},' ..
    '"sent":[%s],"wraps":%d}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean,
    table.concat(per_thread, ","), wrapped))
end
