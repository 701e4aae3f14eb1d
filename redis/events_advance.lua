-- events_advance.lua: an endpoint is done with a session's event (answered 2xx or
-- dead-lettered): move its cursor, keep the lease, forget what every endpoint is done with.
-- KEYS: 1 ev, 2 evc, 3 evl:<endpoint>
-- ARGV: 1 endpoint id, 2 owner token, 3 lease ms, 4 the event's stream id ('' only renews
--       the lease), 5 retention ms, 6.. every configured endpoint id
-- Returns 1 while the lease is ours, 0 when it is not (the caller stops; whoever holds it
-- goes on from the cursor, so an event is sent again at worst, never skipped).
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return 0
end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
if ARGV[4] == '' then
  return 1
end
local function parse(id)
  local ms, n = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms or '0'), tonumber(n or '0')
end
local function before(a, b)
  local am, an = parse(a)
  local bm, bn = parse(b)
  return am < bm or (am == bm and an < bn)
end
local current = redis.call('HGET', KEYS[2], ARGV[1]) or '0-0'
if before(current, ARGV[4]) then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
-- The oldest cursor of all endpoints; an endpoint without one has not started: keep all.
local oldest = nil
for i = 6, #ARGV do
  local c = redis.call('HGET', KEYS[2], ARGV[i])
  if not c then
    return 1
  end
  if not oldest or before(c, oldest) then
    oldest = c
  end
end
if oldest then
  local ms, n = string.match(oldest, '^(%d+)-(%d+)$')
  if ms then
    redis.call('XTRIM', KEYS[1], 'MINID', ms .. '-' .. (tonumber(n) + 1))
  end
end
return 1
