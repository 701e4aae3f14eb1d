-- session_create.lua: create a session's meta hash, unless the id is taken.
-- KEYS: 1 meta, 2 ev (webhook events, events.lua)
-- ARGV: 1 now ms, 2 expires_at ms, 3 ttl ms, 4 code, 5 owner, 6 metadata (JSON),
--       7 events spec (events.lua), 8 '1' records message.published for this session
-- Returns 1 when created (and records session.created), 0 when the id exists.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1],
  'status', 'active', 'created_at', ARGV[1], 'expires_at', ARGV[2],
  'last_activity', ARGV[1], 'code', ARGV[4], 'owner', ARGV[5], 'metadata', ARGV[6],
  'state', 'null', 'hooks_messages', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
record_event(KEYS[2], ARGV[7], ARGV[1], 'session.created', {'data', cjson.encode({
  status = 'active', by = 'api', expires_at = tonumber(ARGV[2]), owner = ARGV[5]})})
return 1
