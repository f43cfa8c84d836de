-- Checks carrier-ring.lua against ring-vectors.txt (which src/cluster/ring.rs
-- checks against the Rust ring): lua5.3 check-ring.lua DIR
local dir = arg[1] or "."
package.path = dir .. "/?.lua;" .. package.path
local ring = dofile(dir .. "/carrier-ring.lua")
local seeds, checked, failed = {}, 0, 0
for line in io.lines(dir .. "/ring-vectors.txt") do
  local kind, a, b, c = line:match("^(%a+) (%S+) (%S+) ?(%S*)$")
  if kind == "seed" then
    local got = string.format("%016x", ring.seed(a))
    seeds[a] = ring.seed(a)
    checked = checked + 1
    if got ~= b then
      failed = failed + 1
      print("seed of " .. a .. ": " .. got .. ", want " .. b)
    end
  elseif kind == "owner" then
    local nodes, live = {}, {}
    for id in b:gmatch("[^,]+") do
      live[id] = true
    end
    for id, seed in pairs(seeds) do
      nodes[#nodes + 1] = { id = id, seed = seed }
    end
    local got = ring.owner(nodes, ring.uuid_bytes(a), function(id) return live[id] end)
    checked = checked + 1
    if got ~= c then
      failed = failed + 1
      print("owner of " .. a .. " among " .. b .. ": " .. tostring(got) .. ", want " .. c)
    end
  end
end
print(string.format("carrier-ring.lua: %d of %d vectors agree with the Rust ring", checked - failed, checked))
os.exit(failed == 0 and checked > 0 and 0 or 1)
