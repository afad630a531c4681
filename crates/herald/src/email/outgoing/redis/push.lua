-- Queues a mail once. ARGV: P, id, to, body, attempts, created (ms), due (ms).
local P = ARGV[1]
local key = P .. 'mail:m:' .. ARGV[2]
if redis.call('EXISTS', key) == 1 then return 0 end
redis.call('HSET', key, 'to', ARGV[3], 'body', ARGV[4], 'attempts', ARGV[5],
  'created', ARGV[6], 'owner', '')
redis.call('ZADD', P .. 'mail:due', ARGV[7], ARGV[2])
return 1
