-- node_prune.lua: one bucket of the node registry, pruned by a node's heartbeat.
-- KEYS: 1 nodes:{b<n>} (node id -> last heartbeat, ms), 2 nodes:conns:{b<n>} (node id ->
--       connection count); one tag, so one slot on a cluster
-- ARGV: 1 horizon ms: a heartbeat at or before it is stale
-- Forgets stale nodes, then every connection count whose node is not registered, so a
-- node that died without a clean shutdown (SIGKILL, a lost machine) leaves nothing behind.
-- That also clears the counts such nodes left before this script existed. A live node
-- writes its heartbeat before its count, and both again at its next heartbeat.
-- Returns the number of counts removed.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local counted = redis.call('HKEYS', KEYS[2])
local gone = {}
local chunk = 500
for first = 1, #counted, chunk do
  local last = math.min(first + chunk - 1, #counted)
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(counted, first, last))
  for i = first, last do
    if not scores[i - first + 1] then
      gone[#gone + 1] = counted[i]
    end
  end
end
for first = 1, #gone, chunk do
  redis.call('HDEL', KEYS[2], unpack(gone, first, math.min(first + chunk - 1, #gone)))
end
return #gone
