-- No KEYS: key names derive from the prefix P (`P wh:`) in ARGV[1].
-- ARGV: P, before (ms), batch. Forgets settled deliveries and attempts older than
-- `before`; returns how many.
local P, before = ARGV[1], tonumber(ARGV[2])
local n = 0
for _, key in ipairs(redis.call('ZRANGE', P .. 'settled', '-inf', '(' .. before, 'BYSCORE', 'LIMIT', 0, ARGV[3])) do
  local d = redis.call('HMGET', P .. 'd:' .. key, 'w', 'm')
  if d[1] and d[2] then
    redis.call('HDEL', P .. 'pair', d[1] .. '\n' .. d[2])
    redis.call('SREM', P .. 'all:' .. d[1], key)
  end
  redis.call('DEL', P .. 'd:' .. key)
  redis.call('ZREM', P .. 'settled', key)
  n = n + 1
end
for _, w in ipairs(redis.call('HKEYS', P .. 'hooks')) do
  local list = P .. 'at:' .. w
  while true do
    local last = redis.call('LINDEX', list, -1)
    if not last then break end
    local ok, a = pcall(cjson.decode, last)
    if ok and type(a.time_ms) == 'number' and a.time_ms >= before then break end
    redis.call('RPOP', list)
    n = n + 1
  end
end
return n
