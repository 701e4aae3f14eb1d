-- publish.lua: store one message and fan it out, atomically, on the session's slot.
-- KEYS: 1 seq, 2 hist, 3 meta, 4 ch, 5 ev (webhook events, events.lua), 6 idem:<key>
--       (the publish's idempotency key; unused without one)
-- ARGV: 1 entry tail (msgpack of ts, from, data, id), 2 history cap, 3 ttl ms, 4 now ms,
--       5 trace context (a msgpack string, or empty when tracing is off),
--       6 expires_at ms for a session this publish creates, 7 tombstone ms (how long
--       the meta outlives the session's lifetime), 8 the message's id (as in the tail),
--       9 events spec (records session.created, session.active, and message.published
--       when the spec names it or the session's meta has `hooks_messages` = '1'),
--       10 how long the idempotency key is remembered, ms ('' when the publish has none)
-- A publish that creates the seq counter starts a new numbering: a new epoch (join.lua).
-- The meta's `tip` is the id of the newest message; each entry ends with `prev`, the tip
-- it followed ('' for the first of a numbering), so a reader that delivered seq n can
-- tell whether seq n+1 continues what it delivered or another branch (a failover to a
-- replica that lacked writes reuses seqs under the same epoch).
-- Returns {seq, reactivated (1/0), created (1/0), events recorded, repeat (1/0), prev}
-- (prev: the id the entry follows, so the publishing instance can deliver its own
-- message from this reply, in order; a repeat has none), or -1
-- when the session has ended, -2 when it is resolved, -4 when its status is none of
-- ours. A publish whose key was stored within the window is a repeat: nothing is written
-- and the first one's seq is answered, whatever the session's status now. Publishing is activity: an
-- inactive session becomes active again (the caller puts it back under the lifecycle
-- clock when `reactivated` or `created`).
-- The entry is the msgpack array [seq, ts, from, data, id, prev]; the gateway encodes
-- everything but seq and prev, which only this script knows. The pub/sub payload is
-- [1, entry] or, with a trace context, [1, entry, traceparent]; history keeps the entry
-- alone.
-- Every session that has a status has its created_at and expires_at (session_create.lua,
-- join.lua and this script's creation set them together), so only a publish that creates
-- the session writes them, and one HMGET reads what the rest needs: 10 calls per publish
-- instead of 14 (BENCHMARKS.md, "Round 3").
if ARGV[10] ~= '' then
  local first = redis.call('GET', KEYS[6])
  if first then
    return {tonumber(first), 0, 0, 0, 1}
  end
end
local meta = redis.call('HMGET', KEYS[3], 'status', 'expires_at', 'tip', 'hooks_messages')
local status = meta[1]
local expires_at = meta[2]
local prev = meta[3] or ''
local reactivated = 0
local created = 0
if not status then
  created = 1
  -- Fields a lost session left behind (its epoch) are kept; HSETNX as before.
  redis.call('HSETNX', KEYS[3], 'status', 'active')
  redis.call('HSETNX', KEYS[3], 'created_at', ARGV[4])
  redis.call('HSETNX', KEYS[3], 'expires_at', ARGV[6])
  expires_at = redis.call('HGET', KEYS[3], 'expires_at')
  record_event(KEYS[5], ARGV[9], ARGV[4], 'session.created', {'data', cjson.encode({
    status = 'active', by = 'publish', expires_at = tonumber(expires_at)})})
elseif status == 'ended' then
  return -1
elseif status == 'resolved' then
  return -2
elseif status == 'inactive' then
  redis.call('HSET', KEYS[3], 'status', 'active', 'warned_for', '')
  reactivated = 1
  record_event(KEYS[5], ARGV[9], ARGV[4], 'session.active',
    {'data', cjson.encode({status = 'active', reason = 'activity'})})
elseif status ~= 'active' then
  -- Corrupt or another program's: never taken for a writable session.
  return -4
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[3], 'epoch', t[1] .. string.format('%06d', tonumber(t[2])))
  prev = ''
end
local seq = redis.call('INCR', KEYS[1])
if ARGV[10] ~= '' then
  redis.call('SET', KEYS[6], seq, 'PX', ARGV[10])
end
local entry = '\150' .. cmsgpack.pack(seq) .. ARGV[1] .. cmsgpack.pack(prev)
local cap = tonumber(ARGV[2])
-- The list only needs trimming once it is over its cap.
if redis.call('LPUSH', KEYS[2], entry) > cap then
  redis.call('LTRIM', KEYS[2], 0, cap - 1)
end
redis.call('HSET', KEYS[3], 'last_activity', ARGV[4], 'tip', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
-- The meta outlives the session's end of life by the tombstone (see join.lua).
local expires = tonumber(expires_at or '0') or 0
redis.call('PEXPIRE', KEYS[3],
  math.max(tonumber(ARGV[3]), expires - tonumber(ARGV[4]) + tonumber(ARGV[7])))
if ARGV[5] == '' then
  redis.call('SPUBLISH', KEYS[4], '\146\1' .. entry)
else
  redis.call('SPUBLISH', KEYS[4], '\147\1' .. entry .. ARGV[5])
end
record_event(KEYS[5], ARGV[9], ARGV[4], 'message.published', {'e', entry},
  meta[4] == '1')
return {seq, reactivated, created, events_recorded, 0, prev}
