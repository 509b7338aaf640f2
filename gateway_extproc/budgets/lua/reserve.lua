-- reserve: hold each charge's worst-case estimate, all or nothing.
--
-- KEYS[1] reservation record, KEYS[2] lease set, KEYS[2+i] counter hash of charge i,
-- KEYS[2+n+i] the override hash of charge i's budget and scope value (admin API; may not exist).
-- ARGV[1] request id, ARGV[2] now ms, ARGV[3] lease expiry ms, ARGV[4] record retention ms,
-- ARGV[5] n; then 12 per charge: spent field ('spent' or 'b:<bucket>'), estimate, limit,
-- enforced (1/0), expire-at ms (calendar, else 0), lifetime ms (rolling, else 0), bucket ms and
-- bucket count (rolling, else 0 0), thresholds 'pct=micros,...', budget, scope value, window id.
--
-- A charge's limit is its override's while one is in force (hash {limit, expires ms}), else
-- ARGV's; a calendar counter adds its window's top-up credit (field tu).
-- Every charge is checked: spent + held + estimate <= limit. Nothing is written unless every
-- enforced charge passes; monitor charges are checked and reported, never refuse.
-- Reply: {status, state, then per charge: spent, held, limit, would_block, overridden}; status is
-- 'admitted' (spent/held after the hold), 'rejected' (nothing written) or 'replay' (the request id
-- already has a reservation: its state is returned, current counters, nothing changes).
local rec_key, leases = KEYS[1], KEYS[2]
local request_id = ARGV[1]
local now_ms, lease_ms, retention_ms = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local PER = 12
if #KEYS ~= 2 * n + 2 or #ARGV ~= 5 + n * PER then
  error('reserve: expected ' .. (2 * n + 2) .. ' keys and ' .. (5 + n * PER) .. ' arguments')
end
local function arg(i, j)
  return ARGV[5 + (i - 1) * PER + j]
end

local existing = redis.call('HGET', rec_key, 'state')
local admitted = true
local spent, held, blocks, stale, limits, overridden = {}, {}, {}, {}, {}, {}
for i = 1, n do
  local key = KEYS[2 + i]
  spent[i], stale[i] = window_spent(key, tonumber(arg(i, 7)), tonumber(arg(i, 8)), now_ms)
  held[i] = held_of(key)
  blocks[i] = 0
  limits[i], overridden[i] = tonumber(arg(i, 3)), 0
  local ov = redis.call('HMGET', KEYS[2 + n + i], 'limit', 'expires')
  if ov[1] and tonumber(ov[2]) > now_ms then
    limits[i], overridden[i] = tonumber(ov[1]), 1
  end
  if tonumber(arg(i, 7)) == 0 then
    limits[i] = limits[i] + tonumber(redis.call('HGET', key, 'tu') or '0')
  end
  if not existing and spent[i] + held[i] + tonumber(arg(i, 2)) > limits[i] then
    blocks[i] = 1
    if arg(i, 4) == '1' then
      admitted = false
    end
  end
end

local status, state = 'replay', existing
if not existing and not admitted then
  status, state = 'rejected', ''
elseif not existing then
  status, state = 'admitted', 'RESERVED'
  local fields = {'state', 'RESERVED', 'id', request_id, 'lease', lease_ms, 'n', n}
  for i = 1, n do
    local key, est = KEYS[2 + i], tonumber(arg(i, 2))
    held[i] = redis.call('HINCRBY', key, 'held', est)
    if #stale[i] > 0 then
      redis.call('HDEL', key, unpack(stale[i]))
    end
    touch(key, tonumber(arg(i, 5)), tonumber(arg(i, 6)), now_ms)
    local names = {'f', 'e', 'l', 'x', 'ea', 'lf', 'bm', 'nb', 't', 'b', 's', 'w'}
    fields[#fields + 1] = 'k:' .. i
    fields[#fields + 1] = key
    for j = 1, PER do
      fields[#fields + 1] = names[j] .. ':' .. i
      fields[#fields + 1] = arg(i, j)
    end
  end
  redis.call('HSET', rec_key, unpack(fields))
  -- A RESERVED record and the lease set never expire: only settle, release or reap end a
  -- reservation (a TTL could lapse in a long outage and leak the hold into the counter).
  redis.call('PERSIST', rec_key)
  redis.call('ZADD', leases, lease_ms, request_id)
  redis.call('PERSIST', leases)
end

local out = {status, state}
for i = 1, n do
  out[#out + 1] = spent[i]
  out[#out + 1] = held[i]
  out[#out + 1] = limits[i]
  out[#out + 1] = blocks[i]
  out[#out + 1] = overridden[i]
end
return out
