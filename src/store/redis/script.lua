-- Every store operation, dispatched on ARGV[1], so a record and its
-- per-backend set always change together (a script runs atomically).
--
-- KEYS[1]  <prefix>s:<id>, the record: created|seen|state|backend
-- ARGV     op, now, idle, absolute (unix ms and ms), <prefix>b:, id in hex,
--          then per op: tch backend created; ins backend created seen;
--          rep backend; end state (E or R)
--
-- Numbers are unix milliseconds; Lua's doubles hold them exactly (below
-- 2^53), and %.0f prints them without an exponent.
local op, now, idle, abs = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local zp, member, key = ARGV[5], ARGV[6], KEYS[1]
local function parse(v)
  if not v then return nil end
  local c, s, st, b = string.match(v, '^(%d+)|(%d+)|(%u)|(.*)$')
  if not c then return nil end
  return {c = tonumber(c), s = tonumber(s), st = st, b = b}
end
-- The liveness rule of store::deadline in src/store/mod.rs: live while
-- now < min(seen + idle, created + absolute).
local function deadline(r) return math.min(r.s + idle, r.c + abs) end
local function put(r)
  local dl = deadline(r)
  if dl <= now then redis.call('DEL', key) return end
  redis.call('SET', key, string.format('%.0f|%.0f|%s|%s', r.c, r.s, r.st, r.b),
    'PX', string.format('%.0f', dl - now))
  if r.st == 'L' then redis.call('ZADD', zp .. r.b, string.format('%.0f', dl), member) end
end
local v = redis.call('GET', key)
local r = parse(v)
local expired = r and deadline(r) <= now
if expired then
  if r.st == 'L' then redis.call('ZREM', zp .. r.b, member) end
  redis.call('DEL', key)
end
if op == 'get' then
  if r and not expired and r.st == 'L' then r.s = math.max(r.s, now) put(r) end
  return v
end
if expired then r = nil end
if op == 'tch' then
  if not r then
    put({c = tonumber(ARGV[8]), s = now, st = 'L', b = ARGV[7]})
  elseif r.st == 'L' then
    r.s = math.max(r.s, now) put(r)
  end
  return 1
elseif op == 'ins' then
  if r and r.st == 'L' and r.b ~= ARGV[7] then redis.call('ZREM', zp .. r.b, member) end
  put({c = tonumber(ARGV[8]), s = tonumber(ARGV[9]), st = 'L', b = ARGV[7]})
  return 1
elseif op == 'rep' then
  if not r or r.st ~= 'L' then return 0 end
  if r.b ~= ARGV[7] then redis.call('ZREM', zp .. r.b, member) end
  r.b = ARGV[7] r.s = math.max(r.s, now) put(r)
  return 1
elseif op == 'end' then
  if not r then put({c = now, s = now, st = ARGV[7], b = ''}) return 1 end
  if r.st == 'L' then
    redis.call('ZREM', zp .. r.b, member)
    r.st = ARGV[7] r.s = math.max(r.s, now) put(r)
  end
  return 1
end
return redis.error_reply('tether: unknown store op')
