-- No KEYS: key names derive from the prefix P (`P wh:`) in ARGV[1].
-- ARGV: P, endpoint ID, JSON, failing since ('' for none), must exist ('1').
-- Returns 1 if written.
local P, w = ARGV[1], ARGV[2]
if ARGV[5] == '1' and redis.call('HEXISTS', P .. 'hooks', w) == 0 then return 0 end
redis.call('HSET', P .. 'hooks', w, ARGV[3])
if ARGV[4] == '' then
  redis.call('HDEL', P .. 'failing', w)
else
  redis.call('HSET', P .. 'failing', w, ARGV[4])
end
redis.call('INCR', P .. 'version')
return 1
