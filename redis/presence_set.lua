-- presence_set.lua: write a member's info and announce it ([kind, info]).
-- Used to re-add a member swept while its node was stalled (kind 4, join) and to
-- report a member's activity after it was idle (kind 5, update).
-- Also the REST presence routes' write (join, activity): with KEYS[6] and ARGV[8], the
-- member is a REST one, counted in `rest` (client id by expiry), and a new one is refused
-- while the session holds ARGV[8] unexpired REST members: one credential could
-- otherwise fill presence with thousands of entries.
-- KEYS: 1 pres, 2 pinfo, 3 ch, 4 meta, 5 ev (webhook events, events.lua), 6 rest (REST
--       members only)
-- ARGV: 1 client_id, 2 expiry ms (0: keep the current one), 3 info, 4 kind, 5 ttl ms,
--       6 now ms, 7 presence events max (0: no cap; larger sessions are not told),
--       8 REST members max (0 for others), 9 events spec
-- A join (kind 4) of a member not present records member.joined.
-- Returns 1 when written, 0 when the member is gone and kind is an update, and {-1, the
-- soonest expiry ms of a REST member} when a new REST member is refused.
if KEYS[6] then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', ARGV[6])
  if not redis.call('ZSCORE', KEYS[6], ARGV[1])
    and tonumber(ARGV[8]) > 0 and redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[8]) then
    local first = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
    return {-1, tonumber(first[2] or ARGV[6])}
  end
  redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[6], ARGV[5])
end
local was = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[2] == '0' then
  if not was then
    return 0
  end
else
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[4], 'last_activity', ARGV[6])
end
local max = tonumber(ARGV[7])
if ARGV[4] ~= '0' and (max == 0 or redis.call('ZCARD', KEYS[1]) <= max) then
  redis.call('SPUBLISH', KEYS[3], '\146' .. string.char(tonumber(ARGV[4])) .. ARGV[3])
end
if ARGV[4] == '4' and not was then
  record_event(KEYS[5], ARGV[9], ARGV[6], 'member.joined', {'m', ARGV[3]})
end
return 1
