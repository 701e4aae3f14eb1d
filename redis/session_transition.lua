-- session_transition.lua: change a session's status and fields, announce it, atomically.
-- KEYS: 1 meta, 2 ch, 3 ev (webhook events, events.lua)
-- ARGV: 1 now ms, 2 allowed current statuses (comma list, or *), 3 new status ('' keeps),
--       4 event ('' for none), 5 event reason, 6 event at (ms), 7 webhook event type
--       ('' for none), 8 its data (a JSON object), 9 events spec, 10.. field/value pairs
-- Returns {1, fields...} (HGETALL after the change), {-1} when the session does not
-- exist, {-2, status} when its status does not allow the change.
-- The event goes out as the pub/sub payload [6, [event, reason, at]].
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return {-1}
end
-- An unknown status (corrupt, or another program's) allows no change, not even '*'.
local known = {active = true, inactive = true, resolved = true, ended = true}
if not known[status]
  or (ARGV[2] ~= '*' and not string.find(',' .. ARGV[2] .. ',', ',' .. status .. ',', 1, true)) then
  return {-2, status}
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[3])
end
for i = 10, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if ARGV[4] ~= '' then
  redis.call('SPUBLISH', KEYS[2], '\146\6' .. cmsgpack.pack({ARGV[4], ARGV[5], tonumber(ARGV[6])}))
end
if ARGV[7] ~= '' then
  record_event(KEYS[3], ARGV[9], ARGV[1], ARGV[7], {'data', ARGV[8]})
end
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, 1, 1)
return out
