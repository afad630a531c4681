-- No KEYS: key names derive from the prefix P (`P wh:`) in ARGV[1].
-- ARGV: P, endpoint, ordered. The time the next delivery can be claimed (the head's
-- for `ordered`), or nothing.
local P, w = ARGV[1], ARGV[2]
if ARGV[3] == '1' then
  local head = redis.call('ZRANGE', P .. 'ord:' .. w, 0, 0)[1]
  if not head then return false end
  local key = string.sub(head, string.find(head, '\n', 1, true) + 1)
  return redis.call('ZSCORE', P .. 'due:' .. w, key)
end
local first = redis.call('ZRANGE', P .. 'due:' .. w, 0, 0, 'WITHSCORES')
return first[2] or false
