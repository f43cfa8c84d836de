-- Carrier's ring, computed by HAProxy: a request goes straight to the node
-- that owns its user, so long polls are not forwarded (and held twice).
--
-- A key belongs to the live node with the highest xxh3_64(key, seed of the
-- node), the seed being xxh3_64(node id, 0x0063617272696572): the same
-- rendezvous hashing as src/cluster/ring.rs. Keys are 16-byte user ids and
-- node ids are at most 16 bytes, so only XXH3's short-input paths are
-- needed; they are written out below from the XXH3 specification, with
-- Lua 5.3's wrapping 64-bit integers.
--
-- Used as a converter on the token's subject:
--   http-request set-var(txn.owner) var(txn.sub),lua.carrier_owner(carrier)
-- where `carrier` is the backend whose server names are the node ids.
-- Servers that HAProxy's health checks (GET /readyz) do not find up are left
-- out, as the ring leaves out nodes whose lease lapsed. An unknown or
-- malformed subject gives an empty string: the request then takes the
-- backend's ordinary balancing, and Carrier forwards it.

local M = {}

-- Bytes 0..63 of XXH3's default secret (the short paths read no further).
local SECRET = {
  0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
  0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
  0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
  0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
}
local PRIME64_2 = 0xC2B2AE3D27D4EB4F -- hex literals wrap to signed in Lua 5.3
local PRIME64_3 = 0x165667B19E3779F9
local PRIME_MX1 = 0x165667919E3779F9
local PRIME_MX2 = 0x9FB21C651E98DF25
local NODE_SEED = 0x0063617272696572
local MASK32 = 0xFFFFFFFF

-- Little-endian reads; `bytes` is a table of byte values, `at` 0-based.
local function le32(bytes, at)
  return bytes[at + 1] | (bytes[at + 2] << 8) | (bytes[at + 3] << 16) | (bytes[at + 4] << 24)
end

local function le64(bytes, at)
  return le32(bytes, at) | (le32(bytes, at + 4) << 32)
end

local function swap32(x)
  return ((x & 0xFF) << 24) | ((x & 0xFF00) << 8) | ((x >> 8) & 0xFF00) | ((x >> 24) & 0xFF)
end

local function swap64(x)
  return (swap32(x & MASK32) << 32) | swap32((x >> 32) & MASK32)
end

local function rotl64(x, r)
  return (x << r) | (x >> (64 - r))
end

-- The low and high halves of the 128-bit product, folded by xor.
local function mul128_fold64(a, b)
  local a_lo, a_hi = a & MASK32, (a >> 32) & MASK32
  local b_lo, b_hi = b & MASK32, (b >> 32) & MASK32
  local lo_lo, hi_lo = a_lo * b_lo, a_hi * b_lo
  local lo_hi, hi_hi = a_lo * b_hi, a_hi * b_hi
  local cross = (lo_lo >> 32) + (hi_lo & MASK32) + lo_hi
  local upper = (hi_lo >> 32) + (cross >> 32) + hi_hi
  local lower = (cross << 32) | (lo_lo & MASK32)
  return lower ~ upper
end

local function xxh64_avalanche(h)
  h = h ~ (h >> 33)
  h = h * PRIME64_2
  h = h ~ (h >> 29)
  h = h * PRIME64_3
  return h ~ (h >> 32)
end

local function xxh3_avalanche(h)
  h = h ~ (h >> 37)
  h = h * PRIME_MX1
  return h ~ (h >> 32)
end

local function rrmxmx(h, len)
  h = h ~ rotl64(h, 49) ~ rotl64(h, 24)
  h = h * PRIME_MX2
  h = h ~ ((h >> 35) + len)
  h = h * PRIME_MX2
  return h ~ (h >> 28)
end

-- XXH3-64 of `bytes` (1 to 16 of them) with `seed`.
function M.xxh3_short(bytes, seed)
  local len = #bytes
  if len > 8 then
    local flip1 = (le64(SECRET, 24) ~ le64(SECRET, 32)) + seed
    local flip2 = (le64(SECRET, 40) ~ le64(SECRET, 48)) - seed
    local lo = le64(bytes, 0) ~ flip1
    local hi = le64(bytes, len - 8) ~ flip2
    return xxh3_avalanche(len + swap64(lo) + hi + mul128_fold64(lo, hi))
  elseif len >= 4 then
    seed = seed ~ (swap32(seed & MASK32) << 32)
    local flip = (le64(SECRET, 8) ~ le64(SECRET, 16)) - seed
    local input64 = le32(bytes, len - 4) + (le32(bytes, 0) << 32)
    return rrmxmx(input64 ~ flip, len)
  elseif len >= 1 then
    local combo = (bytes[1] << 16) | (bytes[(len >> 1) + 1] << 24) | bytes[len] | (len << 8)
    local flip = (le32(SECRET, 0) ~ le32(SECRET, 4)) + seed
    return xxh64_avalanche(combo ~ flip)
  end
  error("xxh3_short: 1 to 16 bytes")
end

local function string_bytes(s)
  return { s:byte(1, -1) }
end

-- The 16 bytes of a UUID in its text form, or nil.
function M.uuid_bytes(text)
  if type(text) ~= "string" then
    return nil
  end
  local hex = text:gsub("-", "")
  if #hex ~= 32 or hex:find("[^%x]") then
    return nil
  end
  local bytes = {}
  for i = 1, 32, 2 do
    bytes[#bytes + 1] = tonumber(hex:sub(i, i + 1), 16)
  end
  return bytes
end

function M.seed(node_id)
  if #node_id < 1 or #node_id > 16 then
    error("carrier-ring.lua: node ids of 1 to 16 bytes only (got '" .. node_id .. "')")
  end
  return M.xxh3_short(string_bytes(node_id), NODE_SEED)
end

-- The owner of `key` (16 bytes) among `nodes` ({ {id=, seed=}, ... })
-- for which `live(id)` holds; nil when none is live.
function M.owner(nodes, key, live)
  local best, best_score
  for _, node in ipairs(nodes) do
    if live(node.id) then
      local score = M.xxh3_short(key, node.seed)
      -- Unsigned comparison; on a tie the later node wins, as in ring.rs.
      if best == nil or not math.ult(score, best_score) then
        best, best_score = node.id, score
      end
    end
  end
  return best
end

-- Inside HAProxy: the converter.
if core ~= nil then
  local rings = {}

  local function ring_of(backend_name)
    local ring = rings[backend_name]
    if ring then
      return ring
    end
    local backend = core.backends[backend_name]
    if backend == nil then
      return nil
    end
    ring = { backend = backend, nodes = {} }
    for name, _ in pairs(backend.servers) do
      ring.nodes[#ring.nodes + 1] = { id = name, seed = M.seed(name) }
    end
    rings[backend_name] = ring
    return ring
  end

  core.register_converters("carrier_owner", function(sub, backend_name)
    local key = M.uuid_bytes(sub)
    local ring = ring_of(backend_name or "carrier")
    if key == nil or ring == nil then
      return ""
    end
    local owner = M.owner(ring.nodes, key, function(id)
      local status = ring.backend.servers[id]:get_stats()["status"]
      return status ~= nil and status:sub(1, 2) == "UP"
    end)
    return owner or ""
  end)
end

return M
