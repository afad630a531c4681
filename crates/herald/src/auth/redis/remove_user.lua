-- Runs after prelude.lua (key names from the prefix p = ARGV[1]); no KEYS.
-- ARGV: p, name. Removes the user, their tokens and their ACL entries.
local n = ARGV[2]
if redis.call('SREM', k_users(), n) == 0 then return 0 end
for _, d in ipairs(redis.call('ZRANGE', k_tokens(n), 0, -1)) do redis.call('DEL', k_token(d)) end
redis.call('DEL', k_user(n), k_tokens(n))
drop_acl_of(n)
bump()
return 1
