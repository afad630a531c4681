-- Claims an idempotency key, or reports what holds it.
-- KEYS[1]: the key's hash (fp, resp); KEYS[2]: the index (sorted set: entry key ->
-- expiry ms). ARGV: fingerprint, lease ms, most entries kept.
-- Returns {code, response}: 0 won, 1 done (with the response), 2 pending, 3 mismatch.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entry = redis.call('HMGET', KEYS[1], 'fp', 'resp')
if entry[1] then
  if entry[1] ~= ARGV[1] then
    return {3, ''}
  end
  if entry[2] then
    return {1, entry[2]}
  end
  return {2, ''}
end
-- Bounded: the index holds completed entries only (a claim expires by itself within
-- its lease, and there are only as many as publishes under way). Entries that
-- expired leave it; over the limit, those nearest their expiry go first.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local over = redis.call('ZCARD', KEYS[2]) + 1 - tonumber(ARGV[3])
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do
    redis.call('DEL', oldest[i])
  end
end
redis.call('HSET', KEYS[1], 'fp', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {0, ''}
