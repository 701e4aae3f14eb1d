-- publish_limits.lua: the publish rate limits, checked and counted in front of publish.lua
-- as one script (the gateway runs this file followed by publish.lua), so a limited
-- publish costs one round trip and one script instead of three. Only where every key
-- lives on one node (standalone, Sentinel): on a Cluster the logs and the session are on
-- different slots, and ratelimit.lua runs apart, once per log.
-- KEYS: 1-6 publish.lua's; 7.. one sliding-window log per limit (a ZSET, as ratelimit.lua)
-- ARGV: 1-10 publish.lua's; 11.. three per log: window ms, limit, a unique member
-- Refused: {-3, which log (1 for KEYS[7]), its count, its oldest admission ms, now ms},
-- and nothing is counted or stored. Admitted: each log records the admission (Redis'
-- clock, like ratelimit.lua, so every instance counts on one timeline), then publish.lua
-- runs. The check is as exact as ratelimit.lua's: fewer than `limit` admissions in
-- (now - window, now] or no admission.
-- A repeat of a keyed publish (publish.lua answers it, storing nothing) is not counted.
local repeated = ARGV[10] ~= '' and redis.call('EXISTS', KEYS[6]) == 1
if not repeated then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for i = 7, #KEYS do
    local a = 11 + (i - 7) * 3
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - tonumber(ARGV[a]))
    local count = redis.call('ZCARD', KEYS[i])
    if count >= tonumber(ARGV[a + 1]) then
      local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
      return {-3, i - 6, count, tonumber(first[2] or '0'), now}
    end
  end
  for i = 7, #KEYS do
    local a = 11 + (i - 7) * 3
    redis.call('ZADD', KEYS[i], now, ARGV[a + 2])
    redis.call('PEXPIRE', KEYS[i], ARGV[a])
  end
end
