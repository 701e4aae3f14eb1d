-- presence_refresh.lua: one node's heartbeat for its members of one session.
-- KEYS: 1 pres, 2 pinfo, 3 ch, 4 seq, 5 ev (webhook events, events.lua)
-- ARGV: 1 now ms, 2 new expiry ms, 3 ttl ms, 4 presence events max (0: no cap),
--       5 events spec, 6.. client ids of this node's members
-- Pushes the expiry of each listed member that is still present; sweeps members whose
-- expiry passed (their node stopped refreshing) and announces each leave once ([3, info]).
-- Returns {ids no longer present (so the node can re-add them), number swept}.
-- Two calls per chunk of members rather than two per member: ZMSCORE finds who is still
-- present, one ZADD XX pushes their expiries (XX: never re-adds anyone). Chunks keep
-- unpack under Lua's stack limit (8,000 values) in a session of thousands.
local missing = {}
local chunk = 500
for first = 6, #ARGV, chunk do
  local last = math.min(first + chunk - 1, #ARGV)
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, first, last))
  local present = {}
  for i = first, last do
    if scores[i - first + 1] then
      present[#present + 1] = ARGV[2]
      present[#present + 1] = ARGV[i]
    else
      missing[#missing + 1] = ARGV[i]
    end
  end
  if #present > 0 then
    redis.call('ZADD', KEYS[1], 'XX', unpack(present))
  end
end
local swept = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]))
for _, id in ipairs(swept) do
  local info = redis.call('HGET', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  local max = tonumber(ARGV[4])
  if info and (max == 0 or redis.call('ZCARD', KEYS[1]) < max) then
    redis.call('SPUBLISH', KEYS[3], '\146\3' .. info)
  end
  if info then
    record_event(KEYS[5], ARGV[5], ARGV[1], 'member.left', {'m', info, 'r', 'expired'})
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  -- While anyone is connected the seq must not expire: numbering restarting under live
  -- members would look like duplicates to them.
  redis.call('PEXPIRE', KEYS[4], ARGV[3])
end
return {missing, #swept}
