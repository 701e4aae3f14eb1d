-- history.lua: the current seq and the stored messages after `since`, atomically.
-- KEYS: 1 seq, 2 hist
-- ARGV: 1 since, 2 history cap
-- Returns {seq, entries newest first}. Entries are consecutive seqs ending at seq.
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local since = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
if since <= seq then
  n = math.min(n, seq - since)
end
local hist = {}
if n > 0 then
  hist = redis.call('LRANGE', KEYS[2], 0, n - 1)
end
return {seq, hist}
