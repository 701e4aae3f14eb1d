-- session_sweep.lua: the lifecycle clock of one session, safe to run from every instance.
-- KEYS: 1 meta, 2 ch
-- ARGV: 1 now ms, 2 inactivity warning ms, 3 inactivity timeout ms
-- Returns {outcome, last_activity, status}. Outcomes that changed something: warned,
-- inactive, ended. Outcomes that did not: active (nothing due yet), unchanged (not active
-- any more: see status), gone (the keys expired). Because the check and the change happen
-- in one script, each warning and each transition is announced exactly once across
-- instances: `warned_for` remembers the last_activity a warning was sent for.
local m = redis.call('HMGET', KEYS[1], 'status', 'last_activity', 'expires_at', 'warned_for')
local status = m[1]
if not status then
  return {'gone', 0, ''}
end
local now = tonumber(ARGV[1])
local last = tonumber(m[2] or '0') or 0
local expires = tonumber(m[3] or '0') or 0
if status == 'ended' then
  return {'unchanged', last, status}
end
if expires > 0 and now >= expires then
  redis.call('HSET', KEYS[1], 'status', 'ended', 'ended_at', ARGV[1], 'reason', 'max_lifetime')
  redis.call('PUBLISH', KEYS[2], '\146\6' .. cmsgpack.pack({'ended', 'max_lifetime', now}))
  return {'ended', last, 'ended'}
end
if status ~= 'active' then
  return {'unchanged', last, status}
end
local timeout = tonumber(ARGV[3])
if now - last >= timeout then
  redis.call('HSET', KEYS[1], 'status', 'inactive', 'inactive_at', ARGV[1])
  redis.call('PUBLISH', KEYS[2], '\146\6' .. cmsgpack.pack({'updated', 'inactive', now}))
  return {'inactive', last, 'inactive'}
end
if now - last >= tonumber(ARGV[2]) and m[4] ~= m[2] then
  redis.call('HSET', KEYS[1], 'warned_for', m[2])
  redis.call('PUBLISH', KEYS[2], '\146\6' .. cmsgpack.pack({'expiring', 'inactivity', last + timeout}))
  return {'warned', last, status}
end
return {'active', last, status}
