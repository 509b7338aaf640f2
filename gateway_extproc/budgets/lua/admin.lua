-- admin: the admin API's budget changes, each atomic. ARGV[1] names the operation.
--
-- 'override_set'    KEYS[1] override hash, KEYS[2] override index (zset member -> expiry ms);
--                   ARGV member, limit micros, expires ms, now ms, reason, by.
--                   Sets {limit, expires, reason, by, at}, expiring at `expires`.
--                   Reply: the limit of the override it replaced, or -1.
-- 'override_remove' KEYS as above; ARGV member. Reply: 1 removed, 0 there was none in force.
-- 'top_up'          KEYS[1] a calendar counter; ARGV amount micros, expire-at ms, now ms.
--                   Adds the credit to field tu (the reserve adds it to the limit), keeping the
--                   counter's TTL to its window end plus grace. Reply: the window's credit now.
local op = ARGV[1]
if op == 'override_set' then
  local now_ms, expires = tonumber(ARGV[5]), tonumber(ARGV[4])
  local old = redis.call('HMGET', KEYS[1], 'limit', 'expires')
  local previous = -1
  if old[1] and tonumber(old[2]) > now_ms then
    previous = tonumber(old[1])
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'limit', ARGV[3], 'expires', ARGV[4], 'reason', ARGV[6],
    'by', ARGV[7], 'at', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], expires - now_ms)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
  redis.call('PERSIST', KEYS[2])
  return previous
elseif op == 'override_remove' then
  local existed = redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return existed
elseif op == 'top_up' then
  local credit = redis.call('HINCRBY', KEYS[1], 'tu', ARGV[2])
  extend_to(KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]))
  return credit
end
error('admin: unknown operation')
