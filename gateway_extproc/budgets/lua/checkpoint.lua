-- checkpoint: a long stream reports the cost so far and extends its lease.
--
-- KEYS[1] reservation record, KEYS[2] lease set.
-- ARGV[1] partial cost so far (micros; the record keeps the largest seen), ARGV[2] new lease
-- expiry ms, ARGV[3] now ms, ARGV[4] record retention ms (unused: a RESERVED record has no TTL).
-- Only a RESERVED reservation changes. Reply: {state, changed (1/0)}.
local rec_key, leases = KEYS[1], KEYS[2]
local state = redis.call('HGET', rec_key, 'state')
if not state then
  return {'UNKNOWN', 0}
end
if state ~= 'RESERVED' then
  return {state, 0}
end
local partial = tonumber(ARGV[1])
local previous = tonumber(redis.call('HGET', rec_key, 'partial') or '0')
if previous > partial then
  partial = previous
end
local lease_ms, now_ms, retention_ms = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('HSET', rec_key, 'partial', partial, 'lease', lease_ms)
redis.call('PERSIST', rec_key)
redis.call('ZADD', leases, lease_ms, redis.call('HGET', rec_key, 'id'))
redis.call('PERSIST', leases)
return {'RESERVED', 1}
