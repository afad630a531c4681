-- Settles a claimed job ARGV[2]: removed (ARGV[3] = ''), or due again at ARGV[3]
-- (unix ms) with one more attempt counted.
local P = ARGV[1]
local job = redis.call('HGET', P .. 'jobs', ARGV[2])
if not job then return 0 end
local j = cjson.decode(job)
if ARGV[3] == '' then
  redis.call('HDEL', P .. 'jobs', ARGV[2])
  redis.call('ZREM', P .. 'due', ARGV[2])
  redis.call('SREM', P .. 'ep:' .. j.e, ARGV[2])
else
  j.a = tostring(tonumber(j.a) + 1)
  redis.call('HSET', P .. 'jobs', ARGV[2], cjson.encode(j))
  redis.call('ZADD', P .. 'due', ARGV[3], ARGV[2])
end
return 1
