-- wrk script: GET feature vectors of users u0..u999 (the demo generator's users).
-- wrk -t2 -c16 -d20s --latency -s scripts/bench/reads.lua http://127.0.0.1:8080
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", string.format("/v1/users/u%d/features", (n * 7919) % 1000))
end
