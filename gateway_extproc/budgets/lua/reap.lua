-- reap: a reservation whose lease ran out while RESERVED (its sidecar died) is charged its last
-- checkpointed cost if any, else each charge's estimate; holds drop; state EXPIRED. Exactly once:
-- concurrent reapers serialize on this script and all but the first find it no longer RESERVED.
-- Rate-limit counters keep the token estimate held at reserve (the worst case) until a late
-- settle or release corrects it (rate_correct).
--
-- KEYS[1] reservation record, KEYS[2] lease set, KEYS[2+i] the counter keys the record lists.
-- ARGV[1] request id, ARGV[2] now ms, ARGV[3] record retention ms (long: a late settle or release
-- of this request still finds the record and corrects the charge, see correct() in common.lua).
-- Reply: {state, changed (1/0), charged (-1: each charge its own estimate), alert crossings
-- (charge index, threshold percent, spent after)...}.
local rec_key, leases = KEYS[1], KEYS[2]
local rec = hash_table(rec_key)
local now_ms = tonumber(ARGV[2])
if rec['state'] == nil then
  redis.call('ZREM', leases, ARGV[1])
  return {'UNKNOWN', 0, 0}
end
if rec['state'] ~= 'RESERVED' then
  redis.call('ZREM', leases, ARGV[1])
  return {rec['state'], 0, 0}
end
if tonumber(rec['lease']) > now_ms then
  return {'RESERVED', 0, 0}
end
local amount = nil
if rec['partial'] then
  amount = tonumber(rec['partial'])
end
local crossings = charge(rec, amount, now_ms)
close(rec_key, leases, rec, 'EXPIRED', amount or 'estimate', tonumber(ARGV[3]))
local out = {'EXPIRED', 1, amount or -1}
for j = 1, #crossings do
  out[#out + 1] = crossings[j]
end
return out
