-- @noindex
-- Making sure a daemon answers: ping; when nothing answers, start `reasam serve` detached and
-- ping until it does. A small state machine stepped from the defer loop, never waiting.
--   c = daemon.connector(transport, { start = bool })
--   c:step(now) -> "pinging" | "starting" | "ready" | "failed";  c:on_event(ev) for every event.
local reaper = reaper
local util = require("util")
local settings = require("settings")
local spawn = require("spawn")

local daemon = {}

local PING_WAIT_UDP = 1.5 -- seconds without a pong before deciding nothing listens
local PING_RESEND = 0.3
-- `reasam ping` retries for up to ~14 s when nothing answers: after this long without its
-- answer, the daemon counts as absent (the ping keeps running; a late pong still counts).
local CLI_PING_PATIENCE = 3
local CLI_MAX_INFLIGHT = 4

function daemon.state_dir()
  local dir = util.join(reaper.GetResourcePath(), "ReaSAM")
  util.mkdirs(dir)
  return dir
end

function daemon.log_path() return util.join(daemon.state_dir(), "daemon.log") end

function daemon.pid_path() return util.join(daemon.state_dir(), "daemon.pid") end

-- Starts `reasam serve` with the settings' host/port (and token file when one is set). Returns the
-- launcher's handle (spawn.detached), or nil, message.
function daemon.start()
  local cmd = settings.reasam_command()
  local args = { cmd, "serve", "--host", settings.get("host"), "--port", tostring(settings.get("port")) }
  if settings.get("token_file") ~= "" then
    args[#args + 1] = "--token-file"
    args[#args + 1] = settings.token_path()
  end
  local log = daemon.log_path()
  local stamp = string.format("\n--- ReaSAM started the daemon at %s: %s\n", os.date("%Y-%m-%d %H:%M:%S"),
    util.command_line(args))
  local f = io.open(log, "ab")
  if f then f:write(stamp) f:close() end
  return spawn.detached(args, log, daemon.pid_path())
end

local function log_tail(n)
  local data = util.read_file(daemon.log_path()) or ""
  local lines = {}
  for line in data:gmatch("[^\r\n]+") do lines[#lines + 1] = line end
  local first = math.max(1, #lines - (n or 6) + 1)
  return table.concat(lines, "\n", first)
end

local function not_found_text()
  return "The reasam command was not found (" .. settings.reasam_command() .. "): install the "
    .. "daemon and set its path in 'ReaSAM - status and settings'."
end

local Connector = {}
Connector.__index = Connector

function daemon.connector(t, opts)
  opts = opts or {}
  return setmetatable({
    t = t,
    start = opts.start ~= false,
    timeout = opts.timeout or settings.get("start_timeout"),
    state = "pinging",
    started = false,
    t0 = nil,
    last_ping = nil,
    info = nil,
    error = nil,
    inflight = 0,
    failed_pings = 0,
  }, Connector)
end

function Connector:fail(msg)
  self.state = "failed"
  self.error = msg
end

function Connector:on_event(ev)
  if self.state ~= "pinging" and self.state ~= "starting" then return end
  if ev.type == "pong" then
    self.state = "ready"
    self.info = ev
  elseif ev.type == "ping_failed" then
    self.inflight = math.max(0, self.inflight - 1)
    self.failed_pings = self.failed_pings + 1
    if ev.code == "unauthorized" then
      self:unauthorized(ev.message)
    elseif ev.rc == 127 or ev.rc == 9009 then
      self:fail(not_found_text())
    else
      self.last_failure = ev.message
    end
  elseif ev.type == "error" and (ev.job_id == nil or ev.job_id == "") then
    if ev.code == "unauthorized" then self:unauthorized(ev.message) end
  end
end

-- A daemon answered but refused the token. Right after starting it, the ping may have gone out
-- before the daemon wrote its token file: keep pinging until the start timeout.
function Connector:unauthorized(message)
  local text = "The daemon refused ReaSAM's token (token file " .. settings.token_path() .. "): "
    .. (message or "") .. ". Set the token file in 'ReaSAM - status and settings'."
  if self.state == "starting" then
    self.unauthorized_text = text
    return
  end
  self:fail(text)
end

function Connector:send_ping(now)
  if self.t.kind == "cli" then
    if self.inflight >= CLI_MAX_INFLIGHT then return end
    self.inflight = self.inflight + 1
  end
  self.last_ping = now
  local ok, err = self.t:ping()
  if not ok then
    self:fail("Cannot reach the daemon: " .. tostring(err))
  end
end

function Connector:begin_start(now)
  if not self.start then
    self:fail(string.format("No ReaSAM daemon answers on %s:%d. Start it with `reasam serve` "
      .. "(or turn on 'start the daemon' in ReaSAM settings).", settings.get("host"), settings.get("port")))
    return
  end
  local launcher, err = daemon.start()
  if not launcher then
    self:fail("Could not start the daemon: " .. tostring(err))
    return
  end
  self.launcher = launcher
  self.started = true
  self.state = "starting"
  self.start_t = now
  reaper.ShowConsoleMsg(string.format("ReaSAM: no daemon answered on %s:%d; starting `%s serve` (log: %s)\n",
    settings.get("host"), settings.get("port"), settings.reasam_command(), daemon.log_path()))
end

-- The launcher ends at once; a non-zero exit code means the daemon was not started (127 or
-- 9009: the command was not found), which is said now rather than at the start timeout.
function Connector:check_launcher()
  local rc, out, err = self.launcher:poll()
  if rc == nil then return end
  self.launcher = nil
  if self.state ~= "starting" then return end
  if rc == 127 or rc == 9009 then
    self:fail(not_found_text())
  elseif rc ~= 0 then
    local text = util.trim((err or "") ~= "" and err or (out or ""))
    self:fail(string.format("Could not start the daemon (exit code %d)%s", rc, text ~= "" and (": " .. text) or ""))
  end
end

function Connector:step(now)
  if self.launcher then self:check_launcher() end
  if self.state == "ready" or self.state == "failed" then return self.state end
  if not self.t0 then
    self.t0 = now
    self:send_ping(now)
    return self.state
  end
  if self.t.kind == "cli" then
    -- Each `reasam ping` is a process; its exit code is the answer.
    if self.state == "pinging" then
      if self.failed_pings > 0 or now - self.t0 > CLI_PING_PATIENCE then
        self:begin_start(now)
        if self.state == "starting" then self:send_ping(now) end
      end
    elseif self.state == "starting" then
      if now - self.start_t > self.timeout then
        self:fail(self:start_failure())
      elseif now - self.last_ping > 1.0 then
        self:send_ping(now)
      end
    end
    return self.state
  end
  -- UDP
  if self.state == "pinging" then
    if now - self.t0 > PING_WAIT_UDP then
      self:begin_start(now)
      if self.state == "starting" then self:send_ping(now) end
    elseif now - self.last_ping > PING_RESEND then
      self:send_ping(now)
    end
  elseif self.state == "starting" then
    if now - self.start_t > self.timeout then
      self:fail(self:start_failure())
    elseif now - self.last_ping > 0.5 then
      self:send_ping(now)
    end
  end
  return self.state
end

function Connector:start_failure()
  if self.unauthorized_text then return self.unauthorized_text end
  local tail = log_tail(8)
  return string.format("The daemon did not answer within %d s of starting `%s serve`.%s\nLog: %s",
    math.floor(self.timeout), settings.reasam_command(), tail ~= "" and ("\n\n" .. tail) or "", daemon.log_path())
end

return daemon
