-- reap: a reservation whose lease ran out while RESERVED (its sidecar died, or its observer never
-- came) is charged its last checkpointed cost if any, else each charge's estimate; holds drop;
-- state EXPIRED. Exactly once: concurrent reapers serialize on this script and all but the first
-- find it no longer RESERVED. Rate-limit counters keep the token estimate held at reserve (the
-- worst case) until a late settle or release corrects it (rate_correct).
-- With the request's spend rollup (one more key, its day's rollup hash; ARGV[4] that day's
-- expire-at ms, ARGV[5] the row), the charge is rolled up in the same call (one request, its cost,
-- all of it estimated) and the record keeps where (uk, ur) and how much (ru), so that a late
-- settle or release corrects the rollup together with the counters (settle.lua, release.lua).
--
-- KEYS[1] reservation record, KEYS[2] lease set, KEYS[2+i] the counter keys the record lists.
-- ARGV[1] request id, ARGV[2] now ms, ARGV[3] record retention ms (long: a late settle or release
-- of this request still finds the record and corrects the charge, see correct() in common.lua).
-- Reply: {state, changed (1/0), charged (-1: each charge its own estimate), rolled up (-1: none),
-- alert crossings (charge index, threshold percent, spent after)...}.
local rec_key, leases = KEYS[1], KEYS[2]
local rec = hash_table(rec_key)
local now_ms = tonumber(ARGV[2])
if rec['state'] == nil then
  redis.call('ZREM', leases, ARGV[1])
  return {'UNKNOWN', 0, 0, -1}
end
if rec['state'] ~= 'RESERVED' then
  redis.call('ZREM', leases, ARGV[1])
  return {rec['state'], 0, 0, -1}
end
if tonumber(rec['lease']) > now_ms then
  return {'RESERVED', 0, 0, -1}
end
local amount = nil
if rec['partial'] then
  amount = tonumber(rec['partial'])
end
local extra = 0
if #ARGV > 3 then
  extra = 1
end
local crossings = charge(rec, amount, now_ms, extra)
local rolled = -1
if extra == 1 then
  rolled = amount or 0
  if amount == nil then -- the request's cost: its largest charge (every charge holds the same)
    for i = 1, tonumber(rec['n']) do
      rolled = math.max(rolled, tonumber(rec['e:' .. i]))
    end
  end
  local key, row = KEYS[#KEYS], ARGV[5]
  redis.call('HINCRBY', key, row .. '|n', 1)
  if rolled > 0 then
    redis.call('HINCRBY', key, row .. '|c', rolled)
    redis.call('HINCRBY', key, row .. '|ce', rolled)
  end
  extend_to(key, tonumber(ARGV[4]), now_ms)
  redis.call('HSET', rec_key, 'ru', rolled, 'uk', key, 'ur', row)
end
close(rec_key, leases, rec, 'EXPIRED', amount or 'estimate', tonumber(ARGV[3]))
local out = {'EXPIRED', 1, amount or -1, rolled}
for j = 1, #crossings do
  out[#out + 1] = crossings[j]
end
return out
