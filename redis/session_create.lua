-- session_create.lua: create a session's meta hash, unless the id is taken.
-- KEYS: 1 meta
-- ARGV: 1 now ms, 2 expires_at ms, 3 ttl ms, 4 code, 5 owner, 6 metadata (JSON)
-- Returns 1 when created, 0 when the id exists.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1],
  'status', 'active', 'created_at', ARGV[1], 'expires_at', ARGV[2],
  'last_activity', ARGV[1], 'code', ARGV[4], 'owner', ARGV[5], 'metadata', ARGV[6],
  'state', 'null')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
