-- owned_claim.lua: count a session against its creator's cap, atomically.
-- KEYS: 1 the user's owned sessions (ZSET session id -> end of its lifetime, ms)
-- ARGV: 1 now ms, 2 session id, 3 its end of life ms, 4 cap
-- Sessions past their lifetime no longer count. Returns 1 when the session is counted
-- (or already was), 0 when the user is at the cap.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local ttl = tonumber(ARGV[3]) - tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
