-- A real `reasam serve` on a free loopback port, with its own token, state and output folders.
local socket = require("socket")
local H = require("helpers")

local D = {}

-- The scripts' own OSC module (it needs nothing from REAPER).
D.osc = dofile(H.LIB .. "/osc.lua")

local function exists(p)
  local f = io.open(p, "rb")
  if f then f:close() return true end
  return false
end

function D.reasam()
  local env = os.getenv("REASAM_BIN")
  if env and env ~= "" then return env end
  for _, c in ipairs({ H.REPO .. "/.venv/bin/reasam" }) do
    if exists(c) then return c end
  end
  local p = io.popen("command -v reasam 2>/dev/null")
  local found = p:read("l")
  p:close()
  return found or "reasam"
end

function D.free_port()
  local u = socket.udp()
  u:setsockname("127.0.0.1", 0)
  local _, port = u:getsockname()
  u:close()
  return tonumber(port)
end

function D.read_token(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local t = f:read("l")
  f:close()
  return t
end

-- One ping over UDP; the pong's arguments or nil.
function D.ping(port, token, timeout)
  local osc = D.osc
  local u = socket.udp()
  u:setsockname("127.0.0.1", 0)
  u:settimeout(timeout or 0.3)
  u:sendto(osc.encode("/reasam/ping", token and { "token", token } or {}), "127.0.0.1", port)
  local data = u:receivefrom()
  u:close()
  if not data then return nil end
  local m = osc.decode(data)
  if m and m.address == "/reasam/pong" then return m.args end
  return nil
end

function D.pid_alive(pid)
  return pid and os.execute("kill -0 " .. pid .. " 2>/dev/null") == true
end

function D.env_for(dir)
  -- What a daemon started by the scripts inherits (instead of the user's folders and config).
  return H.isolated_env(dir) .. string.format(" REASAM_STATE_DIR='%s/state' REASAM_OUT='%s/out' REASAM_CACHE_MB=0",
    dir, dir)
end

function D.start(opts)
  opts = opts or {}
  local d = { dir = H.tmpdir("daemon"), bin = D.reasam() }
  d.port = D.free_port()
  d.token_file = d.dir .. "/token"
  d.log = d.dir .. "/serve.log"
  -- Never the developer's config.toml or config folder.
  local cmd = string.format("env %s '%s' serve --host 127.0.0.1 --port %d --token-file '%s' --state-dir '%s/state' "
    .. "--out '%s/out' --cache-mb 0 > '%s' 2>&1 & echo $! > '%s/pid'",
    H.isolated_env(d.dir), d.bin, d.port, d.token_file, d.dir, d.dir, d.log, d.dir)
  os.execute(cmd)
  d.pid = D.read_token(d.dir .. "/pid")
  local deadline = socket.gettime() + (opts.timeout or 60)
  while socket.gettime() < deadline do
    local token = D.read_token(d.token_file)
    if token then
      local pong = D.ping(d.port, token)
      if pong then
        d.pong = pong
        d.token = token
        return d
      end
    end
    if not D.pid_alive(d.pid) then break end
    socket.sleep(0.1)
  end
  local f = io.open(d.log)
  local log = f and f:read("a") or ""
  if f then f:close() end
  D.stop(d)
  error("reasam serve did not answer: " .. log)
end

function D.kill(pid)
  if not pid then return end
  os.execute("kill " .. pid .. " 2>/dev/null")
  local deadline = socket.gettime() + 10
  while D.pid_alive(pid) and socket.gettime() < deadline do socket.sleep(0.05) end
  if D.pid_alive(pid) then os.execute("kill -9 " .. pid .. " 2>/dev/null") end
end

function D.stop(d)
  if not d then return end
  D.kill(d.pid)
  if not os.getenv("REASAM_KEEP_TMP") then H.rmtree(d.dir) end
end

-- Points a model's ReaSAM settings at daemon d.
function D.configure(model, d, settings)
  model.set_setting("port", d.port)
  model.set_setting("token_file", d.token_file)
  model.set_setting("reasam_command", d.bin)
  model.set_setting("ui", "gfx")
  for k, v in pairs(settings or {}) do model.set_setting(k, v) end
end

function D.has_engine(d, name)
  return d.pong and tostring(d.pong[2]):find(name, 1, true) ~= nil
end

return D
