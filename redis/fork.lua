-- fork.lua: give a session's numbering a new name (epoch) after a reader found it forked.
-- KEYS: 1 meta
-- ARGV: 1 the epoch the reader delivered under
-- A failover to a replica that lacked the newest writes keeps the epoch and numbers new
-- messages with seqs already given to others. A gateway that sees it (a message that
-- does not follow the one it delivered at that seq) calls this, so that every client
-- rejoining with the old epoch is answered `recovered: false`, as after a restart. Only
-- while the epoch is still the one the reader knew: a restart has named a new one, and
-- two readers that find the same fork rename it once.
-- Returns the session's epoch after the call ('' when the session has no meta).
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and epoch == ARGV[1] then
  local t = redis.call('TIME')
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
return epoch or ''
