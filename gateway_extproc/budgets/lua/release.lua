-- release: RESERVED -> RELEASED, dropping every hold without charging anything (the request
-- failed before it cost money). Idempotent: any other state is a no-op that reports it.
--
-- KEYS[1] reservation record, KEYS[2] lease set, KEYS[2+i] the counter keys the record lists.
-- ARGV[1] record retention ms. Reply: {state, changed (1/0)}.
-- Writes only to counters that still exist (HINCRBY keeps their TTL).
local rec_key, leases = KEYS[1], KEYS[2]
local rec = hash_table(rec_key)
if rec['state'] == nil then
  return {'UNKNOWN', 0}
end
if rec['state'] ~= 'RESERVED' then
  return {rec['state'], 0}
end
local n = check_keys(rec)
for i = 1, n do
  local key = KEYS[2 + i]
  if redis.call('EXISTS', key) == 1 then -- else its window is long gone: nothing to drop
    if redis.call('HINCRBY', key, 'held', 0 - tonumber(rec['e:' .. i])) < 0 then
      redis.call('HSET', key, 'held', 0)
    end
  end
end
close(rec_key, leases, rec, 'RELEASED', 0, tonumber(ARGV[1]))
return {'RELEASED', 1}
