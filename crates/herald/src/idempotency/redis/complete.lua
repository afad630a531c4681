-- Records a claimed key's response for the window.
-- KEYS[1]: the key's hash; KEYS[2]: the index. ARGV: response, window ms.
-- A key whose claim expired meanwhile is not recreated: returns 0.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'resp', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), KEYS[1])
return 1
