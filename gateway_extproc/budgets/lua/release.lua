-- release: RESERVED -> RELEASED, dropping every hold without charging anything (the request
-- failed before it cost money). Idempotent: any other state is a no-op that reports it.
-- No record at all (the reserve timed out on the wire and may still arrive): leave a RELEASED
-- tombstone for the retention period, so that late reserve replays instead of holding anything.
--
-- KEYS[1] reservation record, KEYS[2] lease set, KEYS[2+i] the counter keys the record lists.
-- ARGV[1] record retention ms, ARGV[2] request id. Reply: {state, changed (1/0)}, or
-- {'STALE', 0} when the caller passed no counter keys but the reservation has some.
-- Writes only to counters that still exist (HINCRBY keeps their TTL). A reservation the reaper
-- EXPIRED is released once more: its charge is refunded (a failed request is never billed).
-- Rate limits keep counting the request; their token holds drop to 0. When the reaper rolled the
-- request up (fields ru, uk, ur), that rollup is taken back too (the request, its cost): the
-- caller passes the rollup hash uk as one more key ({'STALE', 0} when it did not).
-- Reply: {state, changed, what the reaper's audit record charged (-1: no such record)}.
local rec_key, leases = KEYS[1], KEYS[2]
local rec = hash_table(rec_key)
if rec['state'] == nil then
  redis.call('HSET', rec_key, 'state', 'RELEASED', 'id', ARGV[2], 'n', 0, 'charged', 0)
  redis.call('PEXPIRE', rec_key, tonumber(ARGV[1]))
  return {'RELEASED', 0, -1}
end
local open = rec['state'] == 'RESERVED' or (rec['state'] == 'EXPIRED' and rec['corrected'] == nil)
if open and #KEYS == 2 and tonumber(rec['n']) + tonumber(rec['rn'] or '0') > 0 then
  return {'STALE', 0, -1} -- the reserve landed after the caller read 'no record': read it again
end
if rec['state'] == 'EXPIRED' and rec['corrected'] == nil then
  local reaped, extra = tonumber(rec['ru'] or '-1'), 0
  if reaped >= 0 then
    if KEYS[#KEYS] ~= rec['uk'] then
      return {'STALE', 0, -1} -- the caller's copy predates the reap: read the record again
    end
    extra = 1
  end
  correct(rec, 0, extra) -- nothing was billed: refund what the reaper charged
  rate_correct(rec, 0)
  if extra == 1 then
    local key, row = rec['uk'], rec['ur']
    redis.call('HINCRBY', key, row .. '|n', -1)
    if reaped > 0 then
      redis.call('HINCRBY', key, row .. '|c', 0 - reaped)
      redis.call('HINCRBY', key, row .. '|ce', 0 - reaped)
    end
  end
  redis.call('HSET', rec_key, 'corrected', 1, 'reaped_charge', rec['charged'])
  close(rec_key, leases, rec, 'RELEASED', 0, tonumber(ARGV[1]))
  return {'RELEASED', 1, reaped}
end
if rec['state'] ~= 'RESERVED' then
  return {rec['state'], 0, -1}
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
rate_correct(rec, 0)
close(rec_key, leases, rec, 'RELEASED', 0, tonumber(ARGV[1]))
return {'RELEASED', 1, -1}
