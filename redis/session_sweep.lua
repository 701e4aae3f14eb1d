-- session_sweep.lua: the lifecycle clock of one session, safe to run from every instance.
-- KEYS: 1 meta, 2 ch, 3 ev (webhook events, events.lua)
-- ARGV: 1 now ms, 2 inactivity warning ms, 3 inactivity timeout ms, 4 events spec
-- Returns {outcome, next_due}. Outcomes that changed something:
-- warned, inactive, ended. Outcomes that did not: active (nothing due yet), unchanged (not
-- active any more), gone (the keys expired). next_due is when this session
-- next needs the clock (ms; 0: never again): the caller files it in the due index, so a
-- session is looked at when something is due and not before.
-- Because the check and the change happen in one script, each warning and each transition
-- is announced exactly once across instances: `warned_for` remembers the last_activity a
-- warning was sent for. `warned_at`, `inactive_at` and `ended_at` record when the clock
-- acted (benchmarks measure its lateness from them).
local m = redis.call('HMGET', KEYS[1], 'status', 'last_activity', 'expires_at', 'warned_for')
local status = m[1]
if not status then
  return {'gone', 0}
end
local now = tonumber(ARGV[1])
local last = tonumber(m[2] or '0') or 0
local expires = tonumber(m[3] or '0') or 0
local warning = tonumber(ARGV[2])
local timeout = tonumber(ARGV[3])
-- The earlier of `at` and the end of life.
local function due(at)
  if expires > 0 and (at == 0 or expires < at) then
    return expires
  end
  return at
end
if status == 'ended' then
  return {'unchanged', 0}
end
if expires > 0 and now >= expires then
  redis.call('HSET', KEYS[1], 'status', 'ended', 'ended_at', ARGV[1], 'reason', 'max_lifetime')
  redis.call('SPUBLISH', KEYS[2], '\146\6' .. cmsgpack.pack({'ended', 'max_lifetime', now}))
  record_event(KEYS[3], ARGV[4], ARGV[1], 'session.ended',
    {'data', cjson.encode({status = 'ended', reason = 'max_lifetime'})})
  return {'ended', 0}
end
if status ~= 'active' then
  return {'unchanged', due(0)}
end
if now - last >= timeout then
  redis.call('HSET', KEYS[1], 'status', 'inactive', 'inactive_at', ARGV[1])
  redis.call('SPUBLISH', KEYS[2], '\146\6' .. cmsgpack.pack({'updated', 'inactive', now}))
  record_event(KEYS[3], ARGV[4], ARGV[1], 'session.inactive',
    {'data', cjson.encode({status = 'inactive', reason = 'inactivity'})})
  return {'inactive', due(0)}
end
local warned = m[4] == m[2]
if now - last >= warning and not warned then
  redis.call('HSET', KEYS[1], 'warned_for', m[2], 'warned_at', ARGV[1])
  redis.call('SPUBLISH', KEYS[2], '\146\6' .. cmsgpack.pack({'expiring', 'inactivity', last + timeout}))
  return {'warned', due(last + timeout)}
end
if warned then
  return {'active', due(last + timeout)}
end
return {'active', due(last + warning)}
