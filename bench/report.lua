-- wrk script for bench/runner.py: exact figures as one JSON line, and optional request bodies.
--
-- Environment:
--   BENCH_UPLOAD_BYTES=N   POST N bytes of "x" (the request is built once per thread by wrk,
--                          so the body costs the load generator nothing per request)
--
-- At the end it prints a line starting with "WRKJSON " that the runner parses: counts, bytes,
-- duration in microseconds, every error class wrk keeps, and latency percentiles (us).

local upload = tonumber(os.getenv("BENCH_UPLOAD_BYTES") or "0")
if upload > 0 then
  wrk.method = "POST"
  wrk.body = string.rep("x", upload)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "bytes": %d, "duration_us": %d, "connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"max_us": %d}\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
