-- Runs after prelude.lua (key names from the prefix p = ARGV[1]); no KEYS.
-- ARGV: p, user ('' = everyone's entries of every user), pattern ('' = all of the user's).
if ARGV[2] == '' then redis.call('DEL', k_acl())
elseif ARGV[3] == '' then drop_acl_of(ARGV[2])
else redis.call('HDEL', k_acl(), ARGV[2] .. ':' .. ARGV[3]) end
bump()
return 1
