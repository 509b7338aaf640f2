-- settle: charge the real cost of a RESERVED request and drop its holds. Never rejects.
--
-- KEYS[1] reservation record, KEYS[2] lease set, KEYS[2+i] the counter keys the record lists.
-- ARGV[1] actual cost (micros), ARGV[2] now ms, ARGV[3] record retention ms, ARGV[4] the real
-- input + output tokens (rate limits' token holds are corrected to it; -1: unknown, kept).
-- With a spend rollup: one more key, the day's rollup hash, and ARGV[5...] its row (roll_up);
-- it is written only by the call that settles (exactly once per request).
-- RESERVED (checkpointed or not) moves to SETTLED. EXPIRED (the reaper charged the checkpoint or
-- the estimate) moves to SETTLED once, correcting every counter to the real cost. Any other state -
-- SETTLED, RELEASED, a corrected EXPIRED, or no record at all - is a no-op that reports it.
-- Reply: {state, changed (1/0), alert crossings (charge index, percent, spent after)...}.
local rec_key, leases = KEYS[1], KEYS[2]
local rec = hash_table(rec_key)
if rec['state'] == nil then
  return {'UNKNOWN', 0}
end
local actual, tokens = tonumber(ARGV[1]), tonumber(ARGV[4])
local extra = 0
if #ARGV > 4 then
  extra = 1
end
local function roll()
  if extra == 1 then
    roll_up(KEYS[#KEYS], 5, tonumber(ARGV[2]))
  end
end
if rec['state'] == 'EXPIRED' and rec['corrected'] == nil then
  correct(rec, actual, extra)
  rate_correct(rec, tokens)
  roll()
  redis.call('HSET', rec_key, 'corrected', 1, 'reaped_charge', rec['charged'])
  close(rec_key, leases, rec, 'SETTLED', actual, tonumber(ARGV[3]))
  return {'SETTLED', 1}
end
if rec['state'] ~= 'RESERVED' then
  return {rec['state'], 0}
end
local crossings = charge(rec, actual, tonumber(ARGV[2]), extra)
rate_correct(rec, tokens)
roll()
close(rec_key, leases, rec, 'SETTLED', actual, tonumber(ARGV[3]))
local out = {'SETTLED', 1}
for j = 1, #crossings do
  out[#out + 1] = crossings[j]
end
return out
