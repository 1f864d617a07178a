-- wrk script: POST batches of 100 NDJSON events to /v1/events, distinct users per thread.
-- wrk -t2 -c16 -d20s -s scripts/bench/ingest.lua http://127.0.0.1:8080
local counter = 0
request = function()
  counter = counter + 1
  local lines = {}
  for i = 1, 100 do
    local u = (counter * 7919 + i * 104729) % 100000
    local it = (counter * 31 + i * 17) % 50000
    lines[i] = string.format('{"event_id":"e%d_%d","type":"view","user_id":"u%d","item_id":"i%d","ts":%d}',
      counter, i, u, it, 1767225600000 + counter * 10 + i)
  end
  return wrk.format("POST", "/v1/events", {["content-type"] = "application/x-ndjson"}, table.concat(lines, "\n"))
end
