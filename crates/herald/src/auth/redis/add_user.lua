-- Runs after prelude.lua (key names from the prefix p = ARGV[1]); no KEYS.
-- ARGV: p, name, hash, role, created. 0 if the name is taken.
if redis.call('SADD', k_users(), ARGV[2]) == 0 then return 0 end
redis.call('DEL', k_user(ARGV[2]), k_tokens(ARGV[2]))
redis.call('HSET', k_user(ARGV[2]), 'hash', ARGV[3], 'role', ARGV[4], 'created', ARGV[5])
bump()
return 1
