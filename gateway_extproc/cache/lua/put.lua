-- Store one cache entry and keep the cache under its total size cap. All keys share the
-- {gwc} hash tag (one slot on Redis Cluster).
-- KEYS[1] the entry, KEYS[2] index zset (member -> expiry, ms), KEYS[3] sizes hash
-- (member -> bytes), KEYS[4] total bytes of indexed entries.
-- ARGV[1] member (the key's hex digest), ARGV[2] value, ARGV[3] ttl ms, ARGV[4] now ms,
-- ARGV[5] max total bytes.
-- Returns the members evicted to make room (the caller deletes their entries; they also expire
-- by their own TTL if it cannot).
local function drop(member)
  local size = tonumber(redis.call('HGET', KEYS[3], member) or '0')
  redis.call('HDEL', KEYS[3], member)
  redis.call('ZREM', KEYS[2], member)
  return redis.call('DECRBY', KEYS[4], size)
end
local now = tonumber(ARGV[4])
-- expired entries are gone already: forget their bytes (bounded work per call)
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 256)) do
  drop(member)
end
drop(ARGV[1]) -- a refresh replaces the entry: its old bytes no longer count
local size = string.len(ARGV[2])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], size)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
local total = redis.call('INCRBY', KEYS[4], size)
local evicted = {}
local cap = tonumber(ARGV[5])
while total > cap do
  local first = redis.call('ZRANGE', KEYS[2], 0, 0) -- the entry that expires soonest
  if #first == 0 then break end
  total = drop(first[1])
  table.insert(evicted, first[1])
end
return evicted
