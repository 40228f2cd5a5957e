-- wrk script: closed-loop durable puts, a unique key per request, 256-byte values.
--   wrk ... -s http-put.lua URL -- wraft TOKEN   (POST /v1/machines/kv/propose, bearer token)
--   wrk ... -s http-put.lua URL -- etcd          (POST /v3/kv/put, etcd's JSON gateway)
-- VALUE_BYTES (environment) changes the value size. Non-2xx answers are counted by wrk itself
-- ("Non-2xx or 3xx responses": 4xx and 5xx); `done` also prints the count of statuses other
-- than 200 (unless CHECK=0).
local threads = {}
local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
  table.insert(threads, thread)
end

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  return ((s:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end

function init(args)
  mode = args[1] or "wraft"
  n = 0
  bad = 0
  local value = string.rep("v", tonumber(os.getenv("VALUE_BYTES") or "256"))
  if mode == "etcd" then
    path = "/v3/kv/put"
    headers = { ["Content-Type"] = "application/json" }
    value = b64(value)
  else
    path = "/v1/machines/kv/propose"
    headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[2] }
  end
  -- A per-run random prefix, so that repeated runs against one cluster write new keys.
  math.randomseed(os.time() * 100 + tid)
  prefix = string.format("k%05d-%d-", math.random(0, 99999), tid)
  tail = value
end

function request()
  n = n + 1
  local key = prefix .. n
  local body
  if mode == "etcd" then
    body = '{"key":"' .. b64(key) .. '","value":"' .. tail .. '"}'
  else
    -- prev_kv false: etcd's put returns no previous value unless asked, nor does this.
    body = '{"op":"put","key":"' .. key .. '","value":"' .. tail .. '","prev_kv":false}'
  end
  return wrk.format("POST", path, headers, body)
end

-- CHECK=0 (environment) leaves this hook out: wrk then skips handing each answer to Lua.
if os.getenv("CHECK") ~= "0" then
  function response(status, headers, body)
    if status ~= 200 then
      bad = bad + 1
      if bad == 1 then io.stderr:write("first non-200 answer: " .. status .. " " .. body .. "\n") end
    end
  end
end

function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + (t:get("bad") or 0) end
  io.write(string.format("checked: %d answers, %d not 200\n", summary.requests, b))
end
