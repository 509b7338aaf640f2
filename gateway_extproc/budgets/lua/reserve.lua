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
-- Rate limits follow: ARGV[6 + n * PER] m, then 8 per rate limit j: bucket ms, bucket count,
-- request limit (-1: none), token limit (-1: none), token estimate, enforced (1/0), name, scope
-- value; KEYS[2+2n+j] its counter hash. A rate limit is checked like a budget (its enforced ones
-- refuse, nothing written); when admitted, one request and the token estimate are added to the
-- current bucket and the key lives one window (rate-limit state is disposable).
-- Optionally one more ARGV after the rate limits: the request's facts (JSON: who, which model,
-- its spend rollup row; never prompts or credentials), kept as field 'ad' for the reaper, which
-- audits and rolls up a reservation nobody settled (reap.lua).
-- Reply: {status, state, then per charge: spent, held, limit, would_block, overridden, then per
-- rate limit: requests used, tokens used, would_block, requests retry ms, tokens retry ms,
-- requests reset ms, tokens reset ms (used counts include this request when admitted)}; status is
-- 'admitted' (spent/held after the hold), 'rejected' (nothing written) or 'replay' (the request id
-- already has a reservation: its state is returned, current counters, nothing changes).
local rec_key, leases = KEYS[1], KEYS[2]
local request_id = ARGV[1]
local now_ms, lease_ms, retention_ms = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local PER, RPER = 12, 8
local m = tonumber(ARGV[6 + n * PER] or '0')
local facts = ARGV[7 + n * PER + m * RPER]
if #KEYS ~= 2 * n + 2 + m or #ARGV - (facts and 1 or 0) ~= 6 + n * PER + m * RPER then
  error('reserve: expected ' .. (2 * n + 2 + m) .. ' keys and ' .. (6 + n * PER + m * RPER)
    .. ' arguments')
end
local function arg(i, j)
  return ARGV[5 + (i - 1) * PER + j]
end
local function rarg(i, j)
  return tonumber(ARGV[6 + n * PER + (i - 1) * RPER + j])
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

-- Rate limits: r[i] = {requests, tokens, per-bucket, order, stale, blocked}.
local rates = {}
for i = 1, m do
  local key = KEYS[2 + 2 * n + i]
  local bucket_ms, nb = rarg(i, 1), rarg(i, 2)
  local reqs, toks, per, order, stale = rate_window(key, bucket_ms, nb, now_ms)
  local rlim, tlim, est = rarg(i, 3), rarg(i, 4), rarg(i, 5)
  local rwait, twait = 0, 0
  if rlim >= 0 then
    rwait = rate_wait(per, order, 1, reqs, 1, rlim, bucket_ms, nb, now_ms)
  end
  if tlim >= 0 then
    twait = rate_wait(per, order, 2, toks, est, tlim, bucket_ms, nb, now_ms)
  end
  local blocked = 0
  if not existing and (rwait ~= 0 or twait ~= 0) then
    blocked = 1
    if rarg(i, 6) == 1 then
      admitted = false
    end
  end
  rates[i] = {reqs, toks, per, order, stale, blocked, rwait, twait}
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
  fields[#fields + 1] = 'rn'
  fields[#fields + 1] = m
  for i = 1, m do
    local key, r = KEYS[2 + 2 * n + i], rates[i]
    local bucket_ms, nb, est = rarg(i, 1), rarg(i, 2), rarg(i, 5)
    local bucket = math.floor(now_ms / bucket_ms)
    r[1] = r[1] + 1
    redis.call('HINCRBY', key, 'r:' .. bucket, 1)
    local counts = 0
    if rarg(i, 4) >= 0 then
      counts = 1
      r[2] = r[2] + est
      redis.call('HINCRBY', key, 't:' .. bucket, est)
    end
    r[3][bucket] = r[3][bucket] or {0, 0}
    r[3][bucket][1] = r[3][bucket][1] + 1
    r[3][bucket][2] = r[3][bucket][2] + est * counts
    if #r[4] == 0 or r[4][#r[4]] ~= bucket then
      r[4][#r[4] + 1] = bucket
    end
    if #r[5] > 0 then
      redis.call('HDEL', key, unpack(r[5]))
    end
    redis.call('PEXPIRE', key, bucket_ms * (nb + 1))
    local base = 6 + n * PER + (i - 1) * RPER
    local labels = {
      'rk', key, 'rf', bucket, 're', est * counts, 'rt', counts,
      'rb', ARGV[base + 7], 'rs', ARGV[base + 8]
    }
    for j = 1, #labels, 2 do
      fields[#fields + 1] = labels[j] .. ':' .. i
      fields[#fields + 1] = labels[j + 1]
    end
  end
  if facts then
    fields[#fields + 1] = 'ad'
    fields[#fields + 1] = facts
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
for i = 1, m do
  local r = rates[i]
  local bucket_ms, nb = rarg(i, 1), rarg(i, 2)
  out[#out + 1] = r[1]
  out[#out + 1] = r[2]
  out[#out + 1] = r[6]
  out[#out + 1] = r[7]
  out[#out + 1] = r[8]
  out[#out + 1] = rate_reset(r[3], r[4], 1, bucket_ms, nb, now_ms)
  out[#out + 1] = rate_reset(r[3], r[4], 2, bucket_ms, nb, now_ms)
end
return out
