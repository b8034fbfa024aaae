-- @noindex
-- Two ways to talk to the daemon, with one interface:
--   udp: OSC datagrams through LuaSocket (REAPER: the "Mavriq Lua Sockets" ReaPack package);
--   cli: `reasam send --no-wait` / `reasam ping` / `reasam cancel` run through ExecProcess(…, -1),
--        with the job's status.json / manifest.json read from disk (see jobwatch in runner).
-- Both: t:separate(job), t:cancel(job_id), t:ping(), t:status(job_id), t:shutdown(), t:poll() -> events,
-- t:close().
-- Events: { type = "accepted"|"progress"|"done"|"error"|"cancelled"|"pong"|"status"|"stopping"
--           (cli only: "ping_failed", "cancel_result" with rc, state, code, "status_failed"),
--           job_id, fraction, stage, manifest, code, message, version, engines, device, model_state,
--           json }.
local reaper = reaper
local util = require("util")
local osc = require("osc")
local settings = require("settings")
local spawn = require("spawn")
local json = require("json")

local transport = {}

-- LuaSocket, if it can be loaded; cached per script run.
local socket_lib, socket_error
function transport.load_socket()
  if socket_lib ~= nil or socket_error ~= nil then return socket_lib, socket_error end
  local base = util.join(reaper.GetResourcePath(), "Scripts", "Mavriq ReaScript Repository", "Various",
    "Mavriq-Lua-Sockets")
  local ext = util.is_windows() and "dll" or "so"
  local cpath_entry = util.join(base, "?." .. ext)
  if not package.cpath:find(cpath_entry, 1, true) then
    package.cpath = package.cpath .. ";" .. cpath_entry
    package.path = package.path .. ";" .. util.join(base, "?.lua")
  end
  local first
  for _, name in ipairs({ "socket", "socket.core" }) do
    local ok, lib = pcall(require, name)
    if ok and type(lib) == "table" and lib.udp then
      socket_lib = lib
      return lib
    end
    first = first or tostring(lib)
  end
  -- Lua's "module not found" lists every path it searched: only its first line says anything.
  if first:match("^module '[^']*' not found") then
    socket_error = "LuaSocket not installed"
  else
    socket_error = "LuaSocket could not be loaded (" .. (first:match("^[^\n]*")) .. ")"
  end
  return nil, socket_error
end

local function with_token(args)
  local token = settings.read_token()
  if token then
    args[#args + 1] = "token"
    args[#args + 1] = token
  end
  return args
end

local function is_loopback(host)
  return host == "localhost" or host:match("^127%.") ~= nil or host == "::1"
end

---------------------------------------------------------------------------------------------------
-- UDP
local Udp = {}
Udp.__index = Udp
Udp.kind = "udp"

function transport.udp(host, port)
  local lib, err = transport.load_socket()
  if not lib then return nil, err end
  local sock = lib.udp()
  if not sock then return nil, "cannot create a UDP socket" end
  local ok, berr = sock:setsockname(is_loopback(host) and "127.0.0.1" or "*", 0)
  if not ok then
    sock:close()
    return nil, "cannot bind a UDP socket: " .. tostring(berr)
  end
  sock:settimeout(0)
  if host == "localhost" then host = "127.0.0.1" end
  return setmetatable({ sock = sock, host = host, port = port, sent = 0 }, Udp)
end

function Udp:send(address, args)
  local ok, packet = pcall(osc.encode, address, args)
  if not ok then return nil, packet end
  local sent, err = self.sock:sendto(packet, self.host, self.port)
  if not sent then return nil, "cannot send to " .. self.host .. ":" .. self.port .. ": " .. tostring(err) end
  self.sent = self.sent + 1
  return true
end

function Udp:separate(job)
  local r = job.request
  local args = { job.id, r.path, job.prompt_text or "" }
  local function kv(k, v) args[#args + 1] = k; args[#args + 1] = v end
  kv("region", util.num(r.region_start) .. ":" .. util.num(r.region_end))
  for _, span in ipairs(r.spans or {}) do kv("span", span) end
  -- A stem set: the prompts after the first as repeatable `prompt` keys (protocol addition).
  for i = 2, #(job.prompts or {}) do kv("prompt", job.prompts[i]) end
  kv("engine", job.engine)
  kv("quality", job.quality)
  kv("out", job.out)
  return self:send("/reasam/separate", with_token(args))
end

function Udp:cancel(job_id)
  return self:send("/reasam/cancel", with_token({ job_id }))
end

function Udp:ping()
  return self:send("/reasam/ping", with_token({}))
end

function Udp:status(job_id)
  local args = {}
  if job_id then args[1] = job_id end
  return self:send("/reasam/status", with_token(args))
end

-- Stops the daemon (protocol addition `/reasam/shutdown`); it answers `/reasam/stopping` first.
function Udp:shutdown()
  return self:send("/reasam/shutdown", with_token({}))
end

local function message_event(m)
  local a = m.args
  local addr = m.address
  if addr == "/reasam/accepted" then
    return { type = "accepted", job_id = a[1], queue_position = a[2] }
  elseif addr == "/reasam/progress" then
    return { type = "progress", job_id = a[1], fraction = tonumber(a[2]) or 0, stage = a[3] or "" }
  elseif addr == "/reasam/done" then
    return { type = "done", job_id = a[1], manifest = a[2] }
  elseif addr == "/reasam/error" then
    return { type = "error", job_id = a[1] or "", code = a[2] or "internal", message = a[3] or "" }
  elseif addr == "/reasam/cancelled" then
    return { type = "cancelled", job_id = a[1] }
  elseif addr == "/reasam/pong" then
    return { type = "pong", version = a[1], engines = a[2], device = a[3], model_state = a[4] }
  elseif addr == "/reasam/status" then
    return { type = "status", json = a[1] }
  elseif addr == "/reasam/stopping" then
    return { type = "stopping", running = a[1], queued = a[2] }
  end
  return nil
end

function Udp:poll(max)
  local events = {}
  for _ = 1, max or 256 do
    local data = self.sock:receivefrom(65535) -- (the default, 8192 bytes, would cut a longer reply)
    if not data then break end
    for _, m in ipairs(osc.messages(data)) do
      local ev = message_event(m)
      if ev then events[#events + 1] = ev end
    end
  end
  return events
end

function Udp:close()
  if self.sock then self.sock:close() end
  self.sock = nil
end

---------------------------------------------------------------------------------------------------
-- CLI: `reasam` subcommands in the background, results through files.
local Cli = {}
Cli.__index = Cli
Cli.kind = "cli"

function transport.cli(host, port)
  spawn.sweep(3600)
  return setmetatable({ host = host, port = port, pending = {}, command = settings.reasam_command() }, Cli)
end

function Cli:base_args(sub)
  local args = { self.command, sub, "--host", self.host, "--port", tostring(self.port) }
  local tf = settings.get("token_file")
  if tf ~= "" then
    args[#args + 1] = "--token-file"
    args[#args + 1] = settings.token_path()
  end
  return args
end

function Cli:run(what, args, job_id)
  local h, err = spawn.command(what, args)
  if not h then return nil, err end
  self.pending[#self.pending + 1] = { what = what, handle = h, job_id = job_id }
  return true
end

function Cli:separate(job)
  local r = job.request
  local args = self:base_args("send")
  local function add(...) for _, v in ipairs({ ... }) do args[#args + 1] = v end end
  -- Values are joined to their option with "=" so that one starting with "-" (a prompt such as
  -- "-ish noise", a "-" span) is not read as an option; "--" ends the options before the path.
  add("--no-wait", "--job-id=" .. job.id, "--prompt=" .. (job.prompt_text or ""),
    "--region=" .. util.num(r.region_start) .. ":" .. util.num(r.region_end))
  for _, span in ipairs(r.spans or {}) do add("--span=" .. span) end
  for i = 2, #(job.prompts or {}) do add("--prompt=" .. job.prompts[i]) end
  add("--engine=" .. job.engine, "--quality=" .. job.quality, "--out=" .. job.out, "--", r.path)
  return self:run("send", args, job.id)
end

-- `reasam cancel` waits for the daemon to confirm (the job stops at the engine's next step); its result
-- comes back as a "cancel_result" event, and the runner asks again while the job still runs.
local CANCEL_TIMEOUT = 5

function Cli:cancel(job_id)
  local args = self:base_args("cancel")
  local function add(...) for _, v in ipairs({ ... }) do args[#args + 1] = v end end
  add("--timeout", tostring(CANCEL_TIMEOUT), "--", job_id)
  return self:run("cancel", args, job_id)
end

function Cli:ping()
  local args = self:base_args("ping")
  args[#args + 1] = "--timeout"
  args[#args + 1] = "2"
  return self:run("ping", args)
end

-- timeout: seconds the `reasam status` may wait for an answer (default: its own retries, ~14 s).
function Cli:status(job_id, timeout)
  local args = self:base_args("status")
  if timeout then
    args[#args + 1] = "--timeout"
    args[#args + 1] = util.num(timeout)
  end
  if job_id then
    args[#args + 1] = "--"
    args[#args + 1] = job_id
  end
  return self:run("status", args, job_id)
end

function Cli:shutdown()
  return self:run("stop", self:base_args("stop"))
end

-- What a failed reasam command reported: the JSON body it printed ({"state": "error", "code",
-- "message"}), else its one-line error "reasam: CODE: message" on stderr.
local function cli_error(out, err)
  local body = json.decode(util.trim(out or ""))
  if type(body) == "table" and type(body.code) == "string" then
    return body.code, type(body.message) == "string" and body.message or ""
  end
  local text = util.trim(err ~= "" and err or out)
  local last = text:match("([^\n]*)$") or text
  local code, msg = last:match("^reasam: ([%w_]+): (.*)$")
  return code or "internal", msg or (last ~= "" and last or "the reasam command failed")
end

function Cli:poll()
  local events, still = {}, {}
  for _, p in ipairs(self.pending) do
    local rc, out, err = p.handle:poll()
    if rc == nil then
      still[#still + 1] = p
    elseif p.what == "ping" then
      if rc == 0 then
        local body = json.decode(util.trim(out))
        local ev = { type = "pong", raw = out }
        if type(body) == "table" then
          ev.version, ev.engines, ev.device, ev.model_state = body.version, body.engines, body.device, body.model_state
        end
        events[#events + 1] = ev
      else
        local code, msg = cli_error(out, err)
        events[#events + 1] = { type = "ping_failed", code = code, message = msg, rc = rc }
      end
    elseif p.what == "send" then
      if rc ~= 0 then
        local code, msg = cli_error(out, err)
        events[#events + 1] = { type = "error", job_id = p.job_id, code = code, message = msg }
      else
        events[#events + 1] = { type = "accepted", job_id = p.job_id }
      end
    elseif p.what == "status" then
      if rc == 0 then
        events[#events + 1] = { type = "status", json = out }
      else
        local code, msg = cli_error(out, err)
        events[#events + 1] = { type = "status_failed", job_id = p.job_id, code = code, message = msg, rc = rc }
      end
    elseif p.what == "stop" then
      if rc == 0 then
        local body = json.decode(util.trim(out))
        body = type(body) == "table" and body or {}
        events[#events + 1] = { type = "stopping", running = body.running, queued = body.queued }
      else
        local code, msg = cli_error(out, err)
        events[#events + 1] = { type = "error", job_id = "", code = code, message = msg }
      end
    elseif p.what == "cancel" then
      -- rc 0: the daemon cancelled the job (or it had already ended: state says which). Else
      -- not_found (the `reasam send` has not reached the daemon yet), no answer, ...
      local body = json.decode(util.trim(out))
      local ev = { type = "cancel_result", job_id = p.job_id, rc = rc }
      if type(body) == "table" then ev.state = body.state end
      if rc ~= 0 then ev.code, ev.message = cli_error(out, err) end
      events[#events + 1] = ev
    end
  end
  self.pending = still
  return events
end

-- Discards the helpers still running: a `reasam cancel` still reaches the daemon, and each
-- helper removes its own files when it ends.
function Cli:close()
  for _, p in ipairs(self.pending) do p.handle:discard() end
  self.pending = {}
end

---------------------------------------------------------------------------------------------------

-- The transport chosen by the settings: udp when LuaSocket loads (or is demanded), else cli.
-- Returns transport, note (why cli was chosen, or nil). Falling back is said once per REAPER
-- session, in the console (a note, not an error).
local NOTE_KEY = "fallback_said"

function transport.open()
  local host, port = settings.get("host"), settings.get("port")
  local want = settings.get("transport")
  if want == "cli" then return transport.cli(host, port) end
  local t, err = transport.udp(host, port)
  if t then return t end
  if want == "udp" then
    if not socket_lib then err = err .. ": install 'Mavriq Lua Sockets' from ReaPack, or set the transport to auto" end
    return nil, err
  end
  if reaper.GetExtState(settings.SECTION, NOTE_KEY) == "" then
    reaper.SetExtState(settings.SECTION, NOTE_KEY, "1", false)
    reaper.ShowConsoleMsg("ReaSAM: " .. err .. ": using the slower fallback (`reasam` helper processes); "
      .. "install 'Mavriq Lua Sockets' from ReaPack for OSC over UDP\n")
  end
  return transport.cli(host, port), err
end

return transport
