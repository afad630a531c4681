-- Runs after prelude.lua (key names from the prefix p = ARGV[1]); no KEYS.
-- ARGV: p. Everything, as one consistent view: {version, users (name, hash, role
-- triples), tokens (digest, user, shown, label, expires, last_access, last_origin,
-- created), acl (field, value pairs)}.
local users, tokens = {}, {}
for _, n in ipairs(redis.call('SMEMBERS', k_users())) do
  local u = redis.call('HMGET', k_user(n), 'hash', 'role')
  table.insert(users, n); table.insert(users, u[1] or ''); table.insert(users, u[2] or 'user')
  for _, d in ipairs(redis.call('ZRANGE', k_tokens(n), 0, -1)) do
    local t = redis.call('HMGET', k_token(d), 'shown', 'label', 'expires', 'last_access', 'last_origin', 'created')
    if t[1] then
      table.insert(tokens, d); table.insert(tokens, n)
      for i = 1, 6 do table.insert(tokens, t[i] or '') end
    end
  end
end
return {redis.call('GET', p .. 'auth:version') or '0', users, tokens, redis.call('HGETALL', k_acl())}
