-- leave.lua: remove a member from presence and announce it once ([3, info]).
-- KEYS: 1 pres, 2 pinfo, 3 ch, 4 rest (the REST members' count, presence_set.lua),
--       5 ev (webhook events, events.lua)
-- ARGV: 1 client_id, 2 presence events max (0: no cap; larger sessions are not told),
--       3 now ms, 4 events spec
-- member.left is recorded whatever the session's size: webhooks are not broadcasts.
-- Returns 1 when the member was present, 0 otherwise.
local info = redis.call('HGET', KEYS[2], ARGV[1])
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local max = tonumber(ARGV[2])
if removed == 1 and info and (max == 0 or redis.call('ZCARD', KEYS[1]) < max) then
  redis.call('SPUBLISH', KEYS[3], '\146\3' .. info)
end
if removed == 1 and info then
  record_event(KEYS[5], ARGV[4], ARGV[3], 'member.left', {'m', info, 'r', 'left'})
end
return removed
