-- wrk script: POST NDJSON batches of 1000 view events to /v1/events.
-- 64 bodies are built once, so the load generator spends its CPU on sending.
-- wrk -t2 -c16 -d20s -s scripts/bench/ingest.lua http://127.0.0.1:8080
local bodies = {}
local n = 0
local function body(b)
  local lines = {}
  for i = 1, 1000 do
    local k = b * 1000 + i
    lines[i] = string.format('{"event_id":"e%d","type":"view","user_id":"u%d","item_id":"i%d","ts":%d}',
      k, (k * 7919) % 100000, (k * 104729) % 50000, 1767225600000 + k)
  end
  return table.concat(lines, "\n")
end
for b = 1, 64 do bodies[b] = body(b) end
request = function()
  n = n + 1
  return wrk.format("POST", "/v1/events", {["content-type"] = "application/x-ndjson"}, bodies[(n % 64) + 1])
end
