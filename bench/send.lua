-- wrk script: durable direct sends with unique message ids.
-- Usage: TOKEN=... PEERS=256 wrk -t2 -c256 -d10s -s bench/send.lua http://127.0.0.1:8080
-- Each connection sends to its own peer, so conversations do not contend.
local token = os.getenv("TOKEN")
local counter = 0
-- Set per thread by setup() through thread:set, which writes a *global* in
-- the thread's Lua state: a `local thread_id` here would shadow it and give
-- every thread id 0 (and the same message ids: half the sends were replays
-- before this was fixed).
thread_id = 0
local threads = 0

function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

-- A version-4-shaped UUID from two numbers (LuaJIT has no bit operators).
local function uuid(a, b)
  return string.format("%08x-%04x-4%03x-8%03x-%012x",
    a % 0x100000000, math.floor(b / 65536) % 65536, b % 4096, math.floor(a / 16) % 4096, b)
end

function init(args)
  math.randomseed(os.time() + thread_id * 7919)
  salt = math.random(0, 0x7fffffff)
end

function request()
  counter = counter + 1
  local peer = uuid(0x0badcafe, (thread_id * 1000003 + counter % 256))
  local body = string.format(
    '{"message_id":"%s","to":"%s","body":{"text":"load test message of about sixty bytes......"}}',
    uuid(salt, thread_id * 100000000 + counter), peer)
  return wrk.format("POST", "/v1/messages", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, body)
end

function response(status, headers, body)
  if status ~= 201 then
    errors = (errors or 0) + 1
  end
end
