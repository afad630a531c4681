-- Queues Web Push jobs and moves the feed cursor, only if the cursor is still the
-- one the caller read from (so each message is queued once across nodes).
-- ARGV: P (`<prefix>wp:`), expected cursor ('' = none yet), new cursor, then
-- 3 values per job: endpoint, payload, due (unix ms). Returns the count, -1 if the
-- cursor had moved.
local P = ARGV[1]
local current = redis.call('GET', P .. 'cursor') or ''
if current ~= ARGV[2] then return -1 end
local n = 0
for i = 4, #ARGV, 3 do
  local id = tostring(redis.call('INCR', P .. 'seq'))
  redis.call('HSET', P .. 'jobs', id, cjson.encode({e = ARGV[i], p = ARGV[i + 1], a = '0'}))
  redis.call('ZADD', P .. 'due', ARGV[i + 2], id)
  redis.call('SADD', P .. 'ep:' .. ARGV[i], id)
  n = n + 1
end
redis.call('SET', P .. 'cursor', ARGV[3])
return n
