-- due_reschedule.lua: file the next due time of sessions a sweep leased.
-- KEYS: 1 the due index
-- ARGV: 1 the lease score the claim gave them, then pairs of session id, next due ms
--       (0: nothing will be due again; drop it)
-- A session whose score is no longer the lease was re-filed meanwhile (a publish
-- reactivated it, a resume, a new lifetime): the earlier of the two times wins, so the
-- sweep can never push back a check that became due sooner. Returns how many were filed.
local lease = tonumber(ARGV[1])
local filed = 0
for i = 2, #ARGV, 2 do
  local id, next_due = ARGV[i], tonumber(ARGV[i + 1])
  local current = tonumber(redis.call('ZSCORE', KEYS[1], id))
  if current == lease then
    if next_due == 0 then
      redis.call('ZREM', KEYS[1], id)
    else
      redis.call('ZADD', KEYS[1], next_due, id)
    end
    filed = filed + 1
  elseif current and next_due > 0 then
    redis.call('ZADD', KEYS[1], 'LT', next_due, id)
    filed = filed + 1
  end
end
return filed
