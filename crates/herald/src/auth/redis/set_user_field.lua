-- Runs after prelude.lua (key names from the prefix p = ARGV[1]); no KEYS.
-- ARGV: p, name, field, value[, drop_acl]. 0 if no such user.
local n = ARGV[2]
if redis.call('SISMEMBER', k_users(), n) == 0 then return 0 end
redis.call('HSET', k_user(n), ARGV[3], ARGV[4])
if ARGV[5] == '1' then drop_acl_of(n) end
bump()
return 1
