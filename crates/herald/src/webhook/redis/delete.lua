-- No KEYS: key names derive from the prefix P (`P wh:`) in ARGV[1].
-- ARGV: P, endpoint. Deletes it with its deliveries and attempts; 1 if it existed.
local P, w = ARGV[1], ARGV[2]
local existed = redis.call('HDEL', P .. 'hooks', w)
redis.call('HDEL', P .. 'failing', w)
for _, key in ipairs(redis.call('SMEMBERS', P .. 'all:' .. w)) do
  local m = redis.call('HGET', P .. 'd:' .. key, 'm')
  if m then redis.call('HDEL', P .. 'pair', w .. '\n' .. m) end
  redis.call('DEL', P .. 'd:' .. key)
  redis.call('ZREM', P .. 'pending', key)
  redis.call('ZREM', P .. 'settled', key)
end
redis.call('DEL', P .. 'all:' .. w, P .. 'due:' .. w, P .. 'ord:' .. w, P .. 'lease:' .. w,
  P .. 'at:' .. w)
redis.call('INCR', P .. 'version')
return existed
