-- ratelimit.lua: an exact sliding-window limit (a log of admissions), one check.
-- KEYS: 1 the log (ZSET rc:rl:{scope:key}, member per admission, scored by time ms)
-- ARGV: 1 window ms, 2 limit, 3 a unique member id for this attempt
-- Returns {admitted (1/0), count after, oldest admission ms (0 if none), now ms}.
-- Time is Redis' own clock, so every instance counts against the same timeline. The
-- check is exact: an attempt is admitted only when fewer than `limit` admissions lie in
-- (now - window, now], so no window of that length ever holds more than `limit`.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local admitted = 0
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  count = count + 1
  admitted = 1
end
local oldest = 0
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then
  oldest = tonumber(first[2])
end
return {admitted, count, oldest, now}
