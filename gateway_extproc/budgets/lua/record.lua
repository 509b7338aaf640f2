-- record: roll up a billed request that reserved nothing (no budget applied), exactly once.
--
-- KEYS[1] the request id's reservation record (a SETTLED marker with no charges is left there
-- for the retention, so a retried call does nothing), KEYS[2] the day's spend rollup hash.
-- ARGV[1] record retention ms, ARGV[2] now ms, ARGV[3...] the rollup (see roll_up).
-- Reply: {state, changed (1/0)}.
local rec_key = KEYS[1]
local state = redis.call('HGET', rec_key, 'state')
if state then
  return {state, 0}
end
redis.call('HSET', rec_key, 'state', 'SETTLED', 'n', 0)
redis.call('PEXPIRE', rec_key, tonumber(ARGV[1]))
roll_up(KEYS[2], 3, tonumber(ARGV[2]))
return {'SETTLED', 1}
