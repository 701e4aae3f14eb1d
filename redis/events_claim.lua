-- events_claim.lua: take one endpoint's share of a session's events to deliver.
-- KEYS: 1 ev (the session's events), 2 evc (HASH endpoint -> last id it is done with),
--       3 evl:<endpoint> (the lease: who delivers this session to this endpoint)
-- ARGV: 1 endpoint id, 2 owner token, 3 lease ms, 4 batch size
-- Returns {0, holder} while another owner holds the lease. Otherwise {1, cursor, entries}
-- with the events after the cursor (XRANGE form, oldest first); the lease is then ours
-- when there are entries, and free when there are none: finding nothing and letting go
-- are one step, so an event recorded after this call meets a free lease and its
-- recorder's delivery takes it, and no event waits on an owner that has stopped looking.
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[2] then
  return {0, holder}
end
local cursor = redis.call('HGET', KEYS[2], ARGV[1]) or '0-0'
local entries = redis.call('XRANGE', KEYS[1], '(' .. cursor, '+', 'COUNT', tonumber(ARGV[4]))
if #entries == 0 then
  if holder then
    redis.call('DEL', KEYS[3])
  end
else
  redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
end
return {1, cursor, entries}
