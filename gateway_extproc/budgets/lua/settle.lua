-- settle: charge the real cost of a RESERVED request and drop its holds. Never rejects.
--
-- KEYS[1] reservation record, KEYS[2] lease set, KEYS[2+i] the counter keys the record lists.
-- ARGV[1] actual cost (micros), ARGV[2] now ms, ARGV[3] record retention ms, ARGV[4] the real
-- input + output tokens (rate limits' token holds are corrected to it; -1: unknown, kept).
-- With a spend rollup: one more key, the day's rollup hash, and ARGV[5...] its row (roll_up);
-- it is written only by the call that settles (exactly once per request).
-- RESERVED (checkpointed or not) moves to SETTLED. EXPIRED (the reaper charged the checkpoint or
-- the estimate) moves to SETTLED once, correcting every counter to the real cost; when the reaper
-- rolled the request up (field ru), this rollup is its correction: the request is not counted
-- again, its cost and estimated cost less what the reaper rolled up (the row and day are the
-- reaper's: both come from the request's identity, served model and arrival). Any other state -
-- SETTLED, RELEASED, a corrected EXPIRED, or no record at all - is a no-op that reports it.
-- Reply: {state, changed (1/0), what the reaper's audit record charged (-1: no such record, e.g.
-- not reaped), alert crossings (charge index, percent, spent after)...}.
local rec_key, leases = KEYS[1], KEYS[2]
local rec = hash_table(rec_key)
if rec['state'] == nil then
  return {'UNKNOWN', 0, -1}
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
-- The rollup of a late settle after the reaper rolled up `reaped`: everything but the request
-- count, and the cost fields less `reaped` (written even when this settle's cost is 0).
local function roll_correction(reaped)
  local key, row = KEYS[#KEYS], ARGV[6]
  local less = {c = reaped, ce = reaped}
  for j = 7, #ARGV, 2 do
    local metric, amount = ARGV[j], tonumber(ARGV[j + 1])
    if metric ~= 'n' then
      redis.call('HINCRBY', key, row .. '|' .. metric, amount - (less[metric] or 0))
      less[metric] = nil
    end
  end
  for _, metric in ipairs({'c', 'ce'}) do
    if less[metric] and less[metric] ~= 0 then
      redis.call('HINCRBY', key, row .. '|' .. metric, 0 - less[metric])
    end
  end
  extend_to(key, tonumber(ARGV[5]), tonumber(ARGV[2]))
end
if rec['state'] == 'EXPIRED' and rec['corrected'] == nil then
  correct(rec, actual, extra)
  rate_correct(rec, tokens)
  local reaped = tonumber(rec['ru'] or '-1')
  if reaped >= 0 and extra == 1 then
    roll_correction(reaped)
  else
    roll()
  end
  redis.call('HSET', rec_key, 'corrected', 1, 'reaped_charge', rec['charged'])
  close(rec_key, leases, rec, 'SETTLED', actual, tonumber(ARGV[3]))
  return {'SETTLED', 1, reaped}
end
if rec['state'] ~= 'RESERVED' then
  return {rec['state'], 0, -1}
end
local crossings = charge(rec, actual, tonumber(ARGV[2]), extra)
rate_correct(rec, tokens)
roll()
close(rec_key, leases, rec, 'SETTLED', actual, tonumber(ARGV[3]))
local out = {'SETTLED', 1, -1}
for j = 1, #crossings do
  out[#out + 1] = crossings[j]
end
return out
