-- No KEYS: key names derive from the prefix P (`P wh:`) in ARGV[1].
-- ARGV: P, key, endpoint, state (0 pending, 1 delivered, 2 exhausted), next (ms),
-- settled (ms), attempt JSON, now (s), attempts kept, claimant. Returns
-- `{recorded, failing_since or ''}`. A settled delivery stays settled; a claimant
-- whose lease lapsed and was claimed again can only settle it as delivered.
local P, key, w = ARGV[1], ARGV[2], ARGV[3]
local d = P .. 'd:' .. key
if redis.call('EXISTS', d) == 0 or redis.call('HEXISTS', P .. 'hooks', w) == 0 then
  return {0, ''}
end
redis.call('HINCRBY', d, 'att', 1)
local mine = redis.call('HGET', d, 'owner') == ARGV[10]
if mine then
  redis.call('HDEL', d, 'owner')
  redis.call('ZREM', P .. 'lease:' .. w, key)
end
if redis.call('HGET', d, 'st') == '0' and (mine or ARGV[4] == '1') then
  if ARGV[4] == '0' then
    redis.call('ZADD', P .. 'due:' .. w, ARGV[5], key)
  else
    local m = redis.call('HGET', d, 'm')
    redis.call('HSET', d, 'st', ARGV[4], 'settled', ARGV[6])
    redis.call('ZREM', P .. 'due:' .. w, key)
    redis.call('ZREM', P .. 'ord:' .. w, m .. '\n' .. key)
    redis.call('ZREM', P .. 'pending', key)
    redis.call('ZADD', P .. 'settled', ARGV[6], key)
  end
end
redis.call('LPUSH', P .. 'at:' .. w, ARGV[7])
redis.call('LTRIM', P .. 'at:' .. w, 0, tonumber(ARGV[9]) - 1)
if ARGV[4] == '1' then
  redis.call('HDEL', P .. 'failing', w)
else
  redis.call('HSETNX', P .. 'failing', w, ARGV[8])
end
return {1, redis.call('HGET', P .. 'failing', w) or ''}
