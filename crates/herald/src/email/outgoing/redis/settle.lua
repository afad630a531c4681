-- Settles a claimed mail. ARGV: P, id, owner, retry at (ms; '' = remove: sent or
-- given up). A retry only if `owner` still holds the claim (a lapsed claim that
-- another node took is that node's to settle). Returns 1 if something changed.
local P = ARGV[1]
local key = P .. 'mail:m:' .. ARGV[2]
if ARGV[4] == '' then
  redis.call('ZREM', P .. 'mail:due', ARGV[2])
  return redis.call('DEL', key)
end
if redis.call('HGET', key, 'owner') ~= ARGV[3] then return 0 end
redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSET', key, 'owner', '')
redis.call('ZADD', P .. 'mail:due', ARGV[4], ARGV[2])
return 1
