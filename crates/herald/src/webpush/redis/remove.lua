-- Removes the subscription ARGV[2] and its jobs; with ARGV[3] (unix seconds) only
-- if it was last registered before then (expiry that a renewal just beat keeps
-- it). Returns 1 if a subscription was removed.
local P = ARGV[1]
local sub = redis.call('HGET', P .. 'subs', ARGV[2])
if not sub then return 0 end
if ARGV[3] and ARGV[3] ~= '' and cjson.decode(sub).updated >= tonumber(ARGV[3]) then return 0 end
for _, id in ipairs(redis.call('SMEMBERS', P .. 'ep:' .. ARGV[2])) do
  redis.call('HDEL', P .. 'jobs', id)
  redis.call('ZREM', P .. 'due', id)
end
redis.call('DEL', P .. 'ep:' .. ARGV[2])
return redis.call('HDEL', P .. 'subs', ARGV[2])
