-- Shared by queue.lua (prepended to it): `insert(P, w, m, e, p, t, due, replay)`
-- queues one delivery unless the pair is queued already (replay: makes a settled
-- pair pending again). Returns 1 if it queued something.
local function insert(P, w, m, e, p, t, due, replay)
  if redis.call('HEXISTS', P .. 'hooks', w) == 0 then return 0 end
  local pair = w .. '\n' .. m
  local key = redis.call('HGET', P .. 'pair', pair)
  if key then
    if not replay or redis.call('HGET', P .. 'd:' .. key, 'st') == '0' then return 0 end
    redis.call('HSET', P .. 'd:' .. key, 'st', '0', 'att', '0', 'due', due)
    redis.call('HDEL', P .. 'd:' .. key, 'settled')
    redis.call('ZREM', P .. 'settled', key)
  else
    key = string.format('%016d', redis.call('INCR', P .. 'seq'))
    redis.call('HSET', P .. 'pair', pair, key)
    redis.call('HSET', P .. 'd:' .. key, 'w', w, 'm', m, 'e', e, 'p', p, 't', t,
      'due', due, 'att', '0', 'st', '0')
    redis.call('SADD', P .. 'all:' .. w, key)
  end
  redis.call('ZADD', P .. 'due:' .. w, due, key)
  redis.call('ZADD', P .. 'ord:' .. w, 0, m .. '\n' .. key)
  redis.call('ZADD', P .. 'pending', due, key)
  return 1
end
