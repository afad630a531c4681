-- Gives up a claimed key (its publish failed); a completed key stays.
-- KEYS[1]: the key's hash; KEYS[2]: the index.
if redis.call('HEXISTS', KEYS[1], 'resp') == 1 then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
