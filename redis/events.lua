-- events.lua: the prelude of every script that records webhook events (the store
-- concatenates it in front of the script, as it does publish_limits.lua).
-- An event is appended to the session's own stream (`ev`, in the session's slot) by the
-- script that makes the change it describes: no crash can come between the two, and on a
-- Cluster no script touches two slots.
-- spec: '' when webhooks are off, else 'nonce|maxlen|retention ms|,type,type,' (the types
-- recorded, between commas). An event's id is the caller's nonce (fresh per call) and its
-- rank in the call. Fields: id, type, ts (ms), then the caller's pairs: data (a JSON
-- object), or m (member info, msgpack) and r (why a member left), or e (a history entry,
-- msgpack, exactly as history holds it).
-- `forced` records a type the spec does not name (a session's own opt-in).
local events_recorded = 0
local function record_event(key, spec, now, kind, fields, forced)
  if spec == '' then
    return
  end
  local nonce, maxlen, ttl, types = string.match(spec, '^([^|]*)|(%d+)|(%d+)|(.*)$')
  if not nonce or not (forced or string.find(types, ',' .. kind .. ',', 1, true)) then
    return
  end
  events_recorded = events_recorded + 1
  redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*',
    'id', nonce .. events_recorded, 'type', kind, 'ts', tostring(now), unpack(fields))
  redis.call('PEXPIRE', key, ttl)
end
