-- Shared helpers, prepended by the store to each budget script (Redis 6.2 has no Functions).
--
-- Money is integer micro-dollars. Lua numbers are doubles, exact for integers below 2^53; limits
-- are capped at 10^9 USD = 10^15 micros, and redis.call() formats numbers with %.17g, so every
-- HINCRBY argument is an exact integer. Never tostring() an amount (%.14g), and negate as
-- `0 - x`, never `-x`: -0 is formatted "-0", which HINCRBY rejects as not an integer.
--
-- Counter hashes: calendar {spent, held, a:<pct>}; rolling {b:<bucket>..., held, a:<pct>}.
-- Reservation record fields per charge i: k (counter key), f (spent field), e (estimate),
-- ea (absolute expiry ms, calendar) / lf (lifetime ms, rolling), bm / nb (rolling bucket ms and
-- count, 0 for calendar), t (alert thresholds "pct=micros,..."), plus labels for the caller.
-- Rate limits per charge j (rn of them): rk (counter key), rf (bucket of the reserve), re (token
-- estimate held), rt (1: the limit counts tokens), plus labels rb (name), rs (scope value).

local function hash_table(key)
  local flat = redis.call('HGETALL', key)
  local t = {}
  for j = 1, #flat, 2 do
    t[flat[j]] = flat[j + 1]
  end
  return t
end

-- The oldest rolling bucket inside the window at now_ms.
local function oldest_bucket(bucket_ms, nbuckets, now_ms)
  return math.floor(now_ms / bucket_ms) - nbuckets + 1
end

-- Spend inside the window at now_ms, and (rolling) the bucket fields that fell out of it.
local function window_spent(key, bucket_ms, nbuckets, now_ms)
  if bucket_ms == 0 then
    return tonumber(redis.call('HGET', key, 'spent') or '0'), {}
  end
  local oldest = oldest_bucket(bucket_ms, nbuckets, now_ms)
  local flat = redis.call('HGETALL', key)
  local total, stale = 0, {}
  for j = 1, #flat, 2 do
    local name = flat[j]
    if string.sub(name, 1, 2) == 'b:' then
      if tonumber(string.sub(name, 3)) >= oldest then
        total = total + tonumber(flat[j + 1])
      else
        stale[#stale + 1] = name
      end
    end
  end
  return total, stale
end

local function held_of(key)
  return tonumber(redis.call('HGET', key, 'held') or '0')
end

-- Every write to a counter sets its TTL in the same script: calendar counters live until their
-- window ends plus a grace period (a key for a long-gone window is deleted at once); rolling
-- counters live for their duration plus grace after their last write. Expiry instants come from
-- the caller's clock, so they are applied as TTLs relative to the caller's now: a clock skew
-- between the gateway and Redis shifts an expiry by the skew, never by more.
local function touch(key, expire_at_ms, life_ms, now_ms)
  if expire_at_ms > 0 then
    redis.call('PEXPIRE', key, expire_at_ms - now_ms)
  else
    redis.call('PEXPIRE', key, life_ms)
  end
end

-- Expire the key at expire_at_ms (caller's clock) unless it already lives longer.
local function extend_to(key, expire_at_ms, now_ms)
  if redis.call('PTTL', key) < expire_at_ms - now_ms then
    redis.call('PEXPIRE', key, expire_at_ms - now_ms)
  end
end

-- The caller passes the counter keys it read from the record; they must be exactly those
-- (followed by `extra` more keys the script names itself, e.g. a rollup hash).
-- The budget counters come first, then the rate-limit counters (`rn` of them, fields rk:j).
local function check_keys(rec, extra)
  local n = tonumber(rec['n'])
  local m = tonumber(rec['rn'] or '0')
  if #KEYS ~= n + m + 2 + (extra or 0) then
    error('budget script: expected ' .. (n + m + 2) .. ' keys for this reservation')
  end
  for i = 1, n do
    if rec['k:' .. i] ~= KEYS[2 + i] then
      error('budget script: key ' .. (2 + i) .. ' is not the one this reservation debited')
    end
  end
  for j = 1, m do
    if rec['rk:' .. j] ~= KEYS[2 + n + j] then
      error('budget script: key ' .. (2 + n + j) .. ' is not the one this reservation counted')
    end
  end
  return n
end

-- Rate-limit counters: hash {r:<bucket> requests, t:<bucket> tokens}, bucket = floor(ms /
-- bucket_ms); the window at now is the current bucket and the nbuckets - 1 before it. Sums in
-- the window, per-bucket amounts (ascending bucket order) and the fields that fell out of it.
local function rate_window(key, bucket_ms, nbuckets, now_ms)
  local oldest = oldest_bucket(bucket_ms, nbuckets, now_ms)
  local flat = redis.call('HGETALL', key)
  local reqs, toks, per, stale = 0, 0, {}, {}
  for j = 1, #flat, 2 do
    local name = flat[j]
    local bucket = tonumber(string.sub(name, 3))
    if bucket and bucket >= oldest then
      local amount = tonumber(flat[j + 1])
      per[bucket] = per[bucket] or {0, 0}
      if string.sub(name, 1, 2) == 'r:' then
        reqs = reqs + amount
        per[bucket][1] = per[bucket][1] + amount
      else
        toks = toks + amount
        per[bucket][2] = per[bucket][2] + amount
      end
    else
      stale[#stale + 1] = name
    end
  end
  local order = {}
  for bucket in pairs(per) do
    order[#order + 1] = bucket
  end
  table.sort(order)
  return reqs, toks, per, order, stale
end

-- Milliseconds until `used - (what has aged out) + add <= limit` in dimension d (1 requests,
-- 2 tokens): 0 if it fits now, -1 if it never will by waiting (add alone is over the limit).
local function rate_wait(per, order, d, used, add, limit, bucket_ms, nbuckets, now_ms)
  if used + add <= limit then
    return 0
  end
  if add > limit then
    return -1
  end
  for _, bucket in ipairs(order) do
    used = used - per[bucket][d]
    if used + add <= limit then
      return (bucket + nbuckets) * bucket_ms - now_ms
    end
  end
  return 0
end

-- Milliseconds until nothing counted in dimension d is left in the window.
local function rate_reset(per, order, d, bucket_ms, nbuckets, now_ms)
  for k = #order, 1, -1 do
    if per[order[k]][d] > 0 then
      return (order[k] + nbuckets) * bucket_ms - now_ms
    end
  end
  return 0
end

-- Correct each rate-limit counter's token hold (the worst case, added at reserve to the bucket
-- of its arrival) to `tokens` (the real input + output; 0 for a release; -1: unknown, keep the
-- hold). Only a bucket field that still exists is corrected: a window that has passed is gone.
-- The request itself stays counted whatever its outcome.
local function rate_correct(rec, tokens)
  local n, m = tonumber(rec['n']), tonumber(rec['rn'] or '0')
  if tokens < 0 then
    return
  end
  for j = 1, m do
    local est = tonumber(rec['re:' .. j])
    if rec['rt:' .. j] == '1' and tokens ~= est then
      local key, field = KEYS[2 + n + j], 't:' .. rec['rf:' .. j]
      if redis.call('HEXISTS', key, field) == 1 then
        if redis.call('HINCRBY', key, field, tokens - est) < 0 then
          redis.call('HSET', key, field, 0)
        end
      end
    end
  end
end

-- Drop every charge's hold and add its spend: a calendar charge to the window recorded at
-- reserve (a month that ended meanwhile still gets the spend); a rolling charge to the bucket of
-- now_ms, recorded as the charge's sf:<i> in the reservation (KEYS[1]) for a later correction - a
-- request that ran longer than the window counts for a whole window from its end, and a rolling
-- counter that expired meanwhile is written again. amount: the cost to charge every
-- budget, or nil to charge each its own estimate. Returns alert crossings as a flat list of
-- (charge index, threshold percent, spent after): a crossing is reported at most once per counter
-- and threshold - per calendar window (HSETNX marker living in the window's own hash and TTL), or
-- per rolling duration (marker holding the time it re-arms).
local function charge(rec, amount, now_ms, extra)
  local n = check_keys(rec, extra)
  local crossings = {}
  for i = 1, n do
    local key = KEYS[2 + i]
    local bucket_ms, nbuckets = tonumber(rec['bm:' .. i]), tonumber(rec['nb:' .. i])
    if bucket_ms > 0 or redis.call('EXISTS', key) == 1 then -- else its month is long gone
      local est = tonumber(rec['e:' .. i])
      local cost = amount or est
      if redis.call('HINCRBY', key, 'held', 0 - est) < 0 then
        redis.call('HSET', key, 'held', 0)
      end
      local before = window_spent(key, bucket_ms, nbuckets, now_ms)
      local field = rec['f:' .. i]
      if bucket_ms > 0 then
        field = 'b:' .. math.floor(now_ms / bucket_ms)
        redis.call('HSET', KEYS[1], 'sf:' .. i, field)
      end
      redis.call('HINCRBY', key, field, cost)
      local after = before + cost
      for pct, micros in string.gmatch(rec['t:' .. i] or '', '(%d+)=(%d+)') do
        local threshold = tonumber(micros)
        if before < threshold and after >= threshold then
          local marker = 'a:' .. pct
          local fire
          if bucket_ms == 0 then
            fire = redis.call('HSETNX', key, marker, 1) == 1
          else
            fire = tonumber(redis.call('HGET', key, marker) or '0') <= now_ms
            if fire then
              redis.call('HSET', key, marker, now_ms + bucket_ms * nbuckets)
            end
          end
          if fire then
            crossings[#crossings + 1] = i
            crossings[#crossings + 1] = tonumber(pct)
            crossings[#crossings + 1] = after
          end
        end
      end
      touch(key, tonumber(rec['ea:' .. i]), tonumber(rec['lf:' .. i]), now_ms)
    end
  end
  return crossings
end

-- A reservation the reaper expired (its lease ran out: its sidecar died, or could not reach Redis
-- for longer than the lease) is corrected once when its real outcome arrives late: each counter
-- gets (actual - what the reaper charged it) in the very field the reserve recorded, so the real
-- cost wins whichever came first. A late release refunds the reaper's charge (actual 0).
local function correct(rec, actual, extra)
  local n = check_keys(rec, extra)
  for i = 1, n do
    local key = KEYS[2 + i]
    if redis.call('EXISTS', key) == 1 then -- else its window is long gone
      local charged = rec['charged']
      if charged == 'estimate' then
        charged = rec['e:' .. i]
      end
      local delta = actual - tonumber(charged)
      if delta ~= 0 then -- where the reaper charged it (a rolling charge: the reap's bucket)
        redis.call('HINCRBY', key, rec['sf:' .. i] or rec['f:' .. i], delta)
      end
    end
  end
end

-- Move a reservation to its final state: keep the record only for the retention period (so late
-- retries still find it and do nothing) and take it off the lease set.
local function close(rec_key, leases, rec, state, charged, retention_ms)
  redis.call('HSET', rec_key, 'state', state, 'charged', charged)
  redis.call('PEXPIRE', rec_key, retention_ms)
  redis.call('ZREM', leases, rec['id'])
end

-- Add a billed request's usage to its day's spend rollup (a hash passed in KEYS) and keep the
-- day for its retention. ARGV from index `first`: expire-at ms (caller's clock), the row, then
-- metric / amount pairs. Amounts go to HINCRBY as the caller's integer strings, untouched.
local function roll_up(key, first, now_ms)
  local row = ARGV[first + 1]
  for j = first + 2, #ARGV, 2 do
    redis.call('HINCRBY', key, row .. '|' .. ARGV[j], ARGV[j + 1])
  end
  extend_to(key, tonumber(ARGV[first]), now_ms)
end
