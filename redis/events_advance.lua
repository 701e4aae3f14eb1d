-- events_advance.lua: an endpoint is done with a session's event (answered 2xx or
-- dead-lettered): move its cursor, keep the lease, forget what every endpoint is done with,
-- and (when asked) take the next events, so a delivery costs one call per event.
-- KEYS: 1 ev, 2 evc, 3 evl:<endpoint>
-- ARGV: 1 endpoint id, 2 owner token, 3 lease ms, 4 the event's stream id ('' only renews
--       the lease), 5 retention ms, 6 how many next events to read (0: none),
--       7.. every configured endpoint id
-- Returns 0 when the lease is not ours (the caller stops; whoever holds it goes on from
-- the cursor, so an event is sent again at worst, never skipped). Else {1, entries}: the
-- next events after the cursor (XRANGE form) when asked; when none are left the lease is
-- freed in this same script, as events_claim.lua does.
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return 0
end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
if ARGV[4] == '' then
  return {1, {}}
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
local cursor = redis.call('HGET', KEYS[2], ARGV[1]) or '0-0'
if before(cursor, ARGV[4]) then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
  cursor = ARGV[4]
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
-- The oldest cursor of all endpoints; an endpoint without one has not started: keep all.
local oldest = nil
local started = true
for i = 7, #ARGV do
  local c = redis.call('HGET', KEYS[2], ARGV[i])
  if not c then
    started = false
    break
  end
  if not oldest or before(c, oldest) then
    oldest = c
  end
end
if started and oldest then
  local ms, n = string.match(oldest, '^(%d+)-(%d+)$')
  if ms then
    redis.call('XTRIM', KEYS[1], 'MINID', ms .. '-' .. (tonumber(n) + 1))
  end
end
local want = tonumber(ARGV[6])
if want == 0 then
  return {1, {}}
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. cursor, '+', 'COUNT', want)
if #entries == 0 then
  redis.call('DEL', KEYS[3])
end
return {1, entries}
