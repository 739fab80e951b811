-- wrk script: POST (BENCH_METHOD=POST) or list (GET) /api/v1/aiops/feedback with a bearer
-- token; prints a one-line JSON summary for bench_feedback.py.
local token = os.getenv("BENCH_TOKEN")
local method = os.getenv("BENCH_METHOD") or "POST"
local verdicts = {"VERDICT_CONFIRMED", "VERDICT_FALSE_POSITIVE"}
local counter = 0

request = function()
  if method == "GET" then
    return wrk.format("GET", "/api/v1/aiops/feedback?pageSize=10",
      {["Authorization"] = "Bearer " .. token}, nil)
  end
  counter = counter + 1
  local body = '{"target":{"kind":"TARGET_KIND_ANOMALY","id":"bench-' .. (counter % 1000) ..
    '"},"verdict":"' .. verdicts[(counter % 2) + 1] .. '","series":"latency_p95"}'
  return wrk.format("POST", "/api/v1/aiops/feedback",
    {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,' ..
    '"p50_ms":%.3f,"p95_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
