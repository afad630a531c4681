-- Runs after prelude.lua (key names from the prefix p = ARGV[1]); no KEYS.
-- ARGV: p, user, pattern, access. 0 if no such user (`*` always exists).
local n = ARGV[2]
if n ~= '*' and redis.call('SISMEMBER', k_users(), n) == 0 then return 0 end
redis.call('HSET', k_acl(), n .. ':' .. ARGV[3], ARGV[4])
bump()
return 1
