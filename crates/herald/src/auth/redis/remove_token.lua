-- Runs after prelude.lua (key names from the prefix p = ARGV[1]); no KEYS.
-- ARGV: p, user, digest hex. 0 if the token is not the user's.
local n, d = ARGV[2], ARGV[3]
if redis.call('HGET', k_token(d), 'user') ~= n then return 0 end
redis.call('DEL', k_token(d))
redis.call('ZREM', k_tokens(n), d)
bump()
return 1
