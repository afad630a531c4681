-- No KEYS: key names derive from the prefix P (`P wh:`) in ARGV[1].
-- ARGV: P, endpoint, owner, now, keys... Releases the owner's claims on them.
local P, w = ARGV[1], ARGV[2]
for i = 5, #ARGV do
  local key = ARGV[i]
  local d = P .. 'd:' .. key
  if redis.call('HGET', d, 'owner') == ARGV[3] then
    redis.call('HDEL', d, 'owner')
    redis.call('ZREM', P .. 'lease:' .. w, key)
    if redis.call('HGET', d, 'st') == '0' then
      redis.call('ZADD', P .. 'due:' .. w, ARGV[4], key)
    end
  end
end
return 0
