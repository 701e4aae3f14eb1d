-- due_claim.lua: take the sessions whose lifecycle check is due, leasing them to the caller.
-- KEYS: 1 the due index (ZSET session id -> when its clock next needs to run, ms)
-- ARGV: 1 now ms, 2 most ids to take, 3 lease ms
-- Returns {id1, due1, id2, due2, ...}. Each taken id is re-scored now + lease, so other
-- instances sweeping at the same time take other ids; if the caller dies, the lease runs
-- out and the session is taken again. The caller files each one's real next due time
-- with due_reschedule.lua.
local taken = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[2]))
local lease = tonumber(ARGV[1]) + tonumber(ARGV[3])
for i = 1, #taken, 2 do
  redis.call('ZADD', KEYS[1], lease, taken[i])
end
return taken
