-- peek: would one more request fit each rate limit now? Read only: nothing is counted or held
-- (the reserve that follows counts it, atomically with the budgets). The request path asks this
-- before work a client could make expensive (the guardrails' scan of a large prompt).
--
-- KEYS[j] the counter hash of rate limit j; ARGV[1] now ms, ARGV[2] m, then 8 per rate limit as
-- reserve takes them: bucket ms, bucket count, request limit (-1: none), token limit (-1: none),
-- token estimate, enforced (1/0), name, scope value.
-- Reply per rate limit, as reserve's: requests used, tokens used, would block (1/0), requests
-- retry ms, tokens retry ms, requests reset ms, tokens reset ms (used counts without this request).
local now_ms, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local RPER = 8
if #KEYS ~= m or #ARGV ~= 2 + m * RPER then
  error('peek: expected ' .. m .. ' keys and ' .. (2 + m * RPER) .. ' arguments')
end
local out = {}
for i = 1, m do
  local function rarg(j)
    return tonumber(ARGV[2 + (i - 1) * RPER + j])
  end
  local bucket_ms, nb = rarg(1), rarg(2)
  local reqs, toks, per, order = rate_window(KEYS[i], bucket_ms, nb, now_ms)
  local rlim, tlim, est = rarg(3), rarg(4), rarg(5)
  local rwait, twait = 0, 0
  if rlim >= 0 then
    rwait = rate_wait(per, order, 1, reqs, 1, rlim, bucket_ms, nb, now_ms)
  end
  if tlim >= 0 then
    twait = rate_wait(per, order, 2, toks, est, tlim, bucket_ms, nb, now_ms)
  end
  local blocked = 0
  if rwait ~= 0 or twait ~= 0 then
    blocked = 1
  end
  out[#out + 1] = reqs
  out[#out + 1] = toks
  out[#out + 1] = blocked
  out[#out + 1] = rwait
  out[#out + 1] = twait
  out[#out + 1] = rate_reset(per, order, 1, bucket_ms, nb, now_ms)
  out[#out + 1] = rate_reset(per, order, 2, bucket_ms, nb, now_ms)
end
return out
