-- leave.lua: remove a member from presence and announce it once ([3, info]).
-- KEYS: 1 pres, 2 pinfo, 3 ch
-- ARGV: 1 client_id
-- Returns 1 when the member was present (and announced), 0 otherwise.
local info = redis.call('HGET', KEYS[2], ARGV[1])
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if removed == 1 and info then
  redis.call('PUBLISH', KEYS[3], '\146\3' .. info)
end
return removed
