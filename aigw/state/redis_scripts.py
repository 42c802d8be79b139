"""The Lua scripts of the redis store (`aigw.state.redis`): each operation is one script, one
round trip, so no instance can interleave another's check and write. Times are µs, from the
injected clock (tests) or Redis's own (`TIME`), so instances with skewed clocks still agree.

Money is in integer nano-dollars. Redis keeps it exactly (HINCRBY, 64-bit); Lua compares in
doubles, exact up to 2^53 nano-dollars ($9 million) per tenant and period, so a budget above that
is checked to within a few nano-dollars. Amounts go to Redis as the integer text they came in
(`int()` below), never as a Lua number's `%.17g` text (`1e+18`, which HINCRBY refuses)."""

from __future__ import annotations

COMMON = """
-- the time in µs: the injected clock's (tests) or the Redis server's
local function clock_us(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return t[1] * 1000000 + t[2]
end
local function fmt(x) return string.format('%.17g', x) end
local function int(x) return string.format('%d', x) end
-- at > 0: expire at that epoch second; at < 0: never; at == 0: a default, unless already set
local function touch(key, at, default_ttl)
  if at > 0 then
    redis.call('EXPIREAT', key, at)
  elseif at == 0 and redis.call('TTL', key) == -1 then
    redis.call('EXPIRE', key, default_ttl)
  end
end
-- what a reservation member "<instance>:<id>:<tokens>[/<nano-dollars>]" holds
local function held(m)
  local t, n = string.match(m, ':(%d+)/(%d+)$')
  if t then return tonumber(t), tonumber(n) end
  return tonumber(string.match(m, ':(%d+)$')), 0
end
-- drop expired reservations (a crashed instance's) and return what is still reserved:
-- tokens and nano-dollars
local function sweep(ukey, rkey, now_ms)
  local v = redis.call('HMGET', ukey, 'r', 'rc')
  local r, rc = tonumber(v[1] or '0'), tonumber(v[2] or '0')
  local left, left_c = r, rc
  local gone = redis.call('ZRANGEBYSCORE', rkey, '-inf', now_ms)
  if #gone > 0 then
    for _, m in ipairs(gone) do
      local t, n = held(m)
      left = left - t
      left_c = left_c - n
    end
    redis.call('ZREMRANGEBYSCORE', rkey, '-inf', now_ms)
  end
  if redis.call('EXISTS', rkey) == 0 then left, left_c = 0, 0 end
  if left < 0 then left = 0 end
  if left_c < 0 then left_c = 0 end
  if left ~= r then redis.call('HSET', ukey, 'r', left) end
  if left_c ~= rc then redis.call('HSET', ukey, 'rc', int(left_c)) end
  return left, left_c
end
-- A token bucket as a GCRA arrival time in µs (see aigw.limits.ratelimit). Whether `units` fit now;
-- then how far the arrival time runs ahead of now after taking them (when they fit) or how
-- long until they would (when not); and how far ahead it runs now.
-- Epoch µs in a double carry a rounding of up to 0.125 µs per write, and a burst adds them up:
-- a unit may come a thousandth of its interval (plus 1 µs) early, never a whole unit, so a
-- full bucket always holds exactly `size`.
local function gcra(key, interval, size, units, now)
  local span = size * interval
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local ahead = tat + units * interval - now
  if ahead > span + math.min(interval * 1e-3 + 1, interval * 0.5) then
    return false, ahead - span, tat - now
  end
  return true, ahead, tat - now
end
local function gcra_set(key, now, ahead)
  redis.call('SET', key, fmt(now + ahead), 'PX', math.ceil(ahead / 1000) + 1)
end
-- charge (delta > 0) or refund (delta < 0) a bucket, in µs of its arrival time
local function gcra_adjust(key, delta, now)
  local cur = redis.call('GET', key)
  if delta < 0 and not cur then return end
  local tat = tonumber(cur or '0')
  if delta > 0 and tat < now then tat = now end
  tat = tat + delta
  if tat > now then
    redis.call('SET', key, fmt(tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  else
    redis.call('DEL', key)
  end
end
"""

# Admission: request bucket, token bucket, quota and money budget check-and-reserve, all or
# nothing.
# KEYS: usage, reservations, overrides version[, request bucket, token bucket]
# ARGV: 1 tokens, 2 limit, 3 member, 4 ttl_ms, 5 expire_at, 6 version_seen, 7 now_us,
#       8 default_ttl, 9 nano-dollars, 10 budget (nano-dollars; 0 = none),
#       11 request interval_us ('' = no request limit), 12 request size,
#       13 token interval_us ('' = no token limit), 14 token size, 15 token units
# Returns {-1} when the overrides changed (nothing done), else {admitted, used, reserved,
# request fits, its lead, its lead now, tokens fit, their lead, their lead now} (see gcra),
# then money spent and reserved.
ADMIT = (
    COMMON
    + """
local v = redis.call('GET', KEYS[3]) or '0'
if v ~= ARGV[6] then return {-1} end
local now = clock_us(ARGV[7])
local req_on = (ARGV[11] or '') ~= ''
local tok_on = (ARGV[13] or '') ~= ''
local req_ok, req_a, req_now = true, 0, 0
if req_on then
  req_ok, req_a, req_now = gcra(KEYS[4], tonumber(ARGV[11]), tonumber(ARGV[12]), 1, now)
end
local tok_ok, tok_a, tok_now = true, 0, 0
if tok_on then
  tok_ok, tok_a, tok_now =
    gcra(KEYS[5], tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15]), now)
end
local now_ms = math.floor(now / 1000)
local r, rc = sweep(KEYS[1], KEYS[2], now_ms)
local u = redis.call('HMGET', KEYS[1], 't', 'c')
local used, cost = tonumber(u[1] or '0'), u[2] or '0'
local tokens, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local nanos, budget = tonumber(ARGV[9]), tonumber(ARGV[10])
local admitted = 0
if req_ok and tok_ok and not (limit > 0 and used + r + tokens > limit)
    and not (budget > 0 and tonumber(cost) + rc + nanos > budget) then
  admitted = 1
  if req_on then gcra_set(KEYS[4], now, req_a) end
  if tok_on then gcra_set(KEYS[5], now, tok_a) end
  if tokens > 0 or nanos > 0 then
    if redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[4]), ARGV[3]) == 1 then
      if tokens > 0 then r = redis.call('HINCRBY', KEYS[1], 'r', tokens) end
      if nanos > 0 then rc = redis.call('HINCRBY', KEYS[1], 'rc', ARGV[9]) end
    end
    local at, dttl = tonumber(ARGV[5]), tonumber(ARGV[8])
    touch(KEYS[1], at, dttl)
    touch(KEYS[2], at, dttl)
  end
end
return {admitted, used, r, req_ok and 1 or 0, fmt(req_a), fmt(req_now),
        tok_ok and 1 or 0, fmt(tok_a), fmt(tok_now), cost, int(rc)}
"""
)

# Settlement: a reservation replaced by usage and its cost, and the token bucket corrected.
# KEYS: usage, reservations, tenants index[, token bucket]
# ARGV: 1 input, 2 output, 3 total, 4 expire_at, 5 default_ttl, 6 tenant ('' = no usage),
#       7 now_us, 8 tenant_retention_s, 9 token bucket delta_us ('' = none),
#       10 cost (nano-dollars), 11.. members to remove
# Returns {used + reserved tokens, spent + reserved nano-dollars} after the write.
COMMIT = (
    COMMON
    + """
local freed, freed_c = 0, 0
for n = 11, #ARGV do
  if redis.call('ZREM', KEYS[2], ARGV[n]) == 1 then
    local t, c = held(ARGV[n])
    freed = freed + t
    freed_c = freed_c + c
  end
end
local gone = redis.call('EXISTS', KEYS[2]) == 0
if freed > 0 then
  local r = redis.call('HINCRBY', KEYS[1], 'r', -freed)
  if r < 0 or gone then redis.call('HSET', KEYS[1], 'r', 0) end
end
if freed_c > 0 then
  local rc = redis.call('HINCRBY', KEYS[1], 'rc', '-' .. int(freed_c))
  if rc < 0 or gone then redis.call('HSET', KEYS[1], 'rc', 0) end
end
local i, o, t = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if i ~= 0 then redis.call('HINCRBY', KEYS[1], 'i', i) end
if o ~= 0 then redis.call('HINCRBY', KEYS[1], 'o', o) end
if t ~= 0 then redis.call('HINCRBY', KEYS[1], 't', t) end
local spent = ARGV[10] ~= '0'
if spent then redis.call('HINCRBY', KEYS[1], 'c', ARGV[10]) end
if i ~= 0 or o ~= 0 or t ~= 0 or spent or freed > 0 or freed_c > 0 then
  touch(KEYS[1], tonumber(ARGV[4]), tonumber(ARGV[5]))
end
local now = -1
if ARGV[6] ~= '' then
  now = clock_us(ARGV[7])
  local now_s = math.floor(now / 1000000)
  redis.call('ZADD', KEYS[3], now_s, ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_s - tonumber(ARGV[8]))
end
if ARGV[9] ~= '' then
  if now < 0 then now = clock_us(ARGV[7]) end
  gcra_adjust(KEYS[4], tonumber(ARGV[9]), now)
end
local now_t = redis.call('HMGET', KEYS[1], 't', 'r', 'c', 'rc')
return {tonumber(now_t[1] or '0') + tonumber(now_t[2] or '0'),
        int(tonumber(now_t[3] or '0') + tonumber(now_t[4] or '0'))}
"""
)

# KEYS: usage, reservations. ARGV: now_us
# Returns {input, output, total, reserved, spent (text), reserved nano-dollars}.
READ = (
    COMMON
    + """
local r, rc = sweep(KEYS[1], KEYS[2], math.floor(clock_us(ARGV[1]) / 1000))
local v = redis.call('HMGET', KEYS[1], 'i', 'o', 't', 'c')
return {tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0'), r,
        v[4] or '0', int(rc)}
"""
)

# KEYS: usage. ARGV: expire_at, default_ttl
RESET = (
    COMMON
    + """
redis.call('HSET', KEYS[1], 'i', 0, 'o', 0, 't', 0, 'c', 0)
touch(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
return 1
"""
)

# One GCRA step on its own: KEYS: bucket. ARGV: interval_us, size, units, now_us
TAKE = (
    COMMON
    + """
local now = clock_us(ARGV[4])
local ok, ahead, lead = gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), now)
if not ok then return {0, fmt(ahead), fmt(lead)} end
gcra_set(KEYS[1], now, ahead)
return {1, fmt(ahead), '0'}
"""
)

# Charge (delta > 0) or refund (delta < 0) tokens: KEYS: bucket. ARGV: delta_us, now_us
ADJUST = (
    COMMON
    + """
gcra_adjust(KEYS[1], tonumber(ARGV[1]), clock_us(ARGV[2]))
return 1
"""
)

# Usage history: one hash per hour, its fields "<tenant>\t<model>\t<endpoint>\t<counter>".
# KEYS: the hour's hash. ARGV: 1 expire_at (epoch s), then field, amount pairs.
# Counters saturate at 2^63-1 instead of failing the whole flush (HINCRBY refuses to overflow).
ADD_HISTORY = """
local top = 9223372036854775807
for n = 2, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[n]) or '0')
  if cur + tonumber(ARGV[n + 1]) >= top then
    redis.call('HSET', KEYS[1], ARGV[n], '9223372036854775807')
  else
    redis.call('HINCRBY', KEYS[1], ARGV[n], ARGV[n + 1])
  end
end
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1
"""
