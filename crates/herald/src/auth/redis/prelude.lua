-- Shared by every auth script (prepended to each): key names from the prefix in
-- ARGV[1], and the helpers that bump the version and drop ACL entries.
local p = ARGV[1]
local function k_users() return p .. 'auth:users' end
local function k_user(n) return p .. 'auth:user:' .. n end
local function k_tokens(n) return p .. 'auth:user:' .. n .. ':tokens' end
local function k_token(d) return p .. 'auth:token:' .. d end
local function k_acl() return p .. 'auth:acl' end
local function bump() return redis.call('INCR', p .. 'auth:version') end
local function drop_acl_of(n)
  local pre = n .. ':'
  for _, f in ipairs(redis.call('HKEYS', k_acl())) do
    if string.sub(f, 1, #pre) == pre then redis.call('HDEL', k_acl(), f) end
  end
end
