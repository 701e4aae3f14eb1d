-- history.lua: the current seq and the stored messages after `since`, atomically, with
-- what names the numbering they belong to.
-- KEYS: 1 seq, 2 hist, 3 meta
-- ARGV: 1 since, 2 history cap
-- Returns {seq, entries newest first, epoch, tip}. Entries are consecutive seqs ending at
-- seq; tip is the id of the message at seq ('' when unknown). A reader that delivered
-- seq `since` checks that what follows continues it: the oldest entry's `prev`, or the
-- tip when nothing follows (see publish.lua).
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
local numbering = redis.call('HMGET', KEYS[3], 'epoch', 'tip')
return {seq, hist, numbering[1] or '', numbering[2] or ''}
