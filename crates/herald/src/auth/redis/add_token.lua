-- Runs after prelude.lua (key names from the prefix p = ARGV[1]); no KEYS.
-- ARGV: p, user, digest hex, shown, label, expires, last_access, last_origin,
-- created, max per user. 0 if no such user. The score orders by creation, then by
-- the version at insertion (tokens made in the same second keep their order), so
-- the trim never drops the newest.
local n, d = ARGV[2], ARGV[3]
if redis.call('SISMEMBER', k_users(), n) == 0 then return 0 end
local v = bump()
redis.call('HSET', k_token(d), 'user', n, 'shown', ARGV[4], 'label', ARGV[5],
  'expires', ARGV[6], 'last_access', ARGV[7], 'last_origin', ARGV[8], 'created', ARGV[9])
local expires = tonumber(ARGV[6])
if expires > 0 then redis.call('EXPIREAT', k_token(d), expires) end
redis.call('ZADD', k_tokens(n), tonumber(ARGV[9]) * 1048576 + (v % 1048576), d)
local extra = redis.call('ZCARD', k_tokens(n)) - tonumber(ARGV[10])
if extra > 0 then
  for _, old in ipairs(redis.call('ZRANGE', k_tokens(n), 0, extra - 1)) do
    redis.call('DEL', k_token(old))
  end
  redis.call('ZREMRANGEBYRANK', k_tokens(n), 0, extra - 1)
end
return 1
