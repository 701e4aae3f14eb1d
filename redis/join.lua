-- join.lua: add a member to presence and read what it needs to start, atomically.
-- KEYS: 1 pres, 2 pinfo, 3 seq, 4 hist, 5 meta, 6 ch, 7 ev (webhook events, events.lua)
-- ARGV: 1 client_id, 2 presence expiry ms, 3 member info (msgpack), 4 now ms,
--       5 since (-1: no history), 6 history cap, 7 ttl ms, 8 presence list max,
--       9 expires_at ms for a session this join creates, 10 presence events max (0: no cap),
--       11 tombstone ms (how long the meta outlives the session's lifetime),
--       12 create ('1': create the session when absent), 13 activity ('1': a writer's
--       join touches last_activity; an observer's is a read), 14 owner (the creating user),
--       15 the epoch the client's since belongs to ('' when it names none),
--       16 the id of the message the client saw at since ('' when it names none),
--       17 events spec (records session.created, member.left for the swept,
--       member.joined)
-- Returns {-1} when the session has ended, {-2} when it does not exist and ARGV[12] is not
-- '1', else {seq, history (newest first), infos, created (1/0), epoch, same numbering (1/0),
-- tip (the id of the message at seq, '' when unknown)}.
-- The epoch names the session's numbering: it changes exactly when the seq counter is
-- created (here, at 0, or in publish.lua), so a numbering that starts over after its keys
-- were lost has a new one, and a since from the old one is not mistaken for the new. It
-- is Redis' clock (TIME, in µs) at that moment: one session cannot start two numberings
-- in the same microsecond, and no caller has to send a fresh id with every call.
-- An epoch cannot name a fork: a failover to a replica that lacked the last writes keeps
-- the epoch and reuses their seqs. So a since of the current epoch is also checked against
-- the message stored at it (its id, ARGV[16]): the `prev` of the entry after it, or the
-- tip when since is the top. Another id there is another branch: not the same numbering.
-- Expired members (their node died) are swept first and announced as leaves ([3, info]);
-- the new member is announced as a join ([4, info]). Sessions with more members than
-- ARGV[10] get no presence events: each would go to every member (quadratic in size).
local status = redis.call('HGET', KEYS[5], 'status')
if status == 'ended' then
  return {-1}
end
local created = 0
if not status then
  if ARGV[12] ~= '1' then
    return {-2}
  end
  redis.call('HSET', KEYS[5], 'status', 'active', 'created_at', ARGV[4],
    'expires_at', ARGV[9], 'last_activity', ARGV[4], 'state', 'null', 'owner', ARGV[14])
  created = 1
  record_event(KEYS[7], ARGV[17], ARGV[4], 'session.created', {'data', cjson.encode({
    status = 'active', by = 'join', expires_at = tonumber(ARGV[9]), owner = ARGV[14]})})
end
local now = tonumber(ARGV[4])
local function loud()
  local max = tonumber(ARGV[10])
  return max == 0 or redis.call('ZCARD', KEYS[1]) <= max
end
if ARGV[13] == '1' then
  redis.call('HSET', KEYS[5], 'last_activity', ARGV[4])
end
-- The meta outlives the session's end of life by the tombstone, whatever the history TTL:
-- the lifecycle clock must find it to announce the end, and late joins must find it ended
-- rather than create a new session under the same id.
local expires = tonumber(redis.call('HGET', KEYS[5], 'expires_at') or '0') or 0
redis.call('PEXPIRE', KEYS[5], math.max(tonumber(ARGV[7]), expires - now + tonumber(ARGV[11])))
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local info = redis.call('HGET', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  if info and loud() then
    redis.call('SPUBLISH', KEYS[6], '\146\3' .. info)
  end
  if info then
    record_event(KEYS[7], ARGV[17], ARGV[4], 'member.left', {'m', info, 'r', 'expired'})
  end
end
local rejoined = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
local stored = redis.call('GET', KEYS[3])
local numbering = redis.call('HMGET', KEYS[5], 'epoch', 'tip')
local epoch = numbering[1]
local tip = numbering[2] or ''
if not stored then
  redis.call('SET', KEYS[3], '0', 'PX', ARGV[7])
  redis.call('HDEL', KEYS[5], 'tip')
  epoch = nil
  tip = ''
end
if not epoch then
  -- A new numbering, or a session from before epochs (or whose meta was lost).
  local t = redis.call('TIME')
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[5], 'epoch', epoch)
end
local same = ARGV[15] == '' or ARGV[15] == epoch
local seq = tonumber(stored or '0')
local since = tonumber(ARGV[5])
if same and ARGV[16] ~= '' and since >= 0 and since <= seq then
  local anchor = nil
  if since == seq then
    anchor = tip
  elseif seq - since <= tonumber(ARGV[6]) then
    local after = redis.call('LINDEX', KEYS[4], seq - since - 1)
    if after then
      local ok, e = pcall(cmsgpack.unpack, after)
      if ok and type(e) == 'table' and e[1] == since + 1 then
        anchor = e[6]
      end
    end
  end
  if type(anchor) == 'string' and anchor ~= '' and anchor ~= ARGV[16] then
    same = false
  end
end
local hist = {}
if since >= 0 then
  local n = tonumber(ARGV[6])
  if same and since <= seq then
    n = math.min(n, seq - since)
  end
  if n > 0 then
    hist = redis.call('LRANGE', KEYS[4], 0, n - 1)
  end
end
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[8]) - 1)
local infos = {}
if #ids > 0 then
  infos = redis.call('HMGET', KEYS[2], unpack(ids))
end
if loud() then
  redis.call('SPUBLISH', KEYS[6], '\146\4' .. ARGV[3])
end
if not rejoined then
  record_event(KEYS[7], ARGV[17], ARGV[4], 'member.joined', {'m', ARGV[3]})
end
return {seq, hist, infos, created, epoch, same and 1 or 0, tip}
