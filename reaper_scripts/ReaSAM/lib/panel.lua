-- @noindex
-- The job panel: the daemon's jobs (this project's and others'), the daemon's state with
-- start/stop, and the settings, in a dockable window (panel_view_imgui, or panel_view_gfx
-- without ReaImGui). The separate actions do not need it: it only watches and commands.
--
-- It never blocks REAPER. One defer tick does a bounded amount of work: it reads what the
-- transport has (non-blocking socket, or the files of the `reasam` helper processes), keeps at
-- most one request (ping or status) in flight, merges at most ROWS_PER_TICK job entries of the
-- last status reply into the list, and draws one frame. The status reply is one datagram of at
-- most 8 KB (the daemon cuts its `recent` list to fit).
local reaper = reaper
local util = require("util")
local json = require("json")
local settings = require("settings")
local transport = require("transport")
local daemon = require("daemon")
local importer = require("importer")
local jobrecord = require("jobrecord")
local reaimgui = require("reaimgui")
local spawn = require("spawn")
local rows = require("panel_rows")
local opener = require("opener")

local panel = {}

panel.TITLE = "ReaSAM jobs"
panel.ROWS_PER_TICK = 8
-- Seconds between requests, and how long an answer may take before the daemon counts as gone.
local EVERY = { udp = 0.5, cli = 1.5 }
local ANSWER_WAIT = { udp = 1.5, cli = 8 }
local CLI_STATUS_TIMEOUT = 3
local PING_EVERY = 10

local FINAL = { done = true, error = true, cancelled = true }

local Panel = {}
Panel.__index = Panel

function panel.new()
  return setmetatable({
    rows = {},
    pending = nil, -- entries of the last status reply not merged yet
    mine = jobrecord.all(),
    daemon = { state = "looking" },
    note = "",
    -- The most rows one tick merged: the job panel spec checks with it that the work per
    -- tick stays bounded (ROWS_PER_TICK).
    most_rows_in_a_tick = 0,
    last_sent = -math.huge,
    pong_at = -math.huge,
    closed = false,
  }, Panel)
end

function Panel:open_transport()
  if self.t then self.t:close() end
  local t, why = transport.open()
  self.t = t
  self.daemon = { state = t and "looking" or "no transport", error = why }
  self.inflight, self.last_sent = nil, -math.huge
end

function Panel:say(text)
  self.note = text
  reaper.ShowConsoleMsg("ReaSAM: " .. text .. "\n")
end

---------------------------------------------------------------------------------------------------
-- Talking to the daemon

-- One request at a time: a ping until the daemon answers (and now and then), else a status.
function Panel:ask(now)
  if not self.t then return end
  local kind = self.t.kind
  if self.inflight then
    if now - self.inflight.at <= ANSWER_WAIT[kind] then return end
    if self.inflight.what == "status" and self.daemon.state == "running" then
      self.daemon.state = "not answering"
    elseif self.daemon.state ~= "starting" or now - (self.start_at or 0) > settings.get("start_timeout") then
      self.daemon = { state = "not running" }
    end
    self.inflight = nil
  end
  if now - self.last_sent < EVERY[kind] then return end
  local what = (self.daemon.state == "running" and now - self.pong_at < PING_EVERY) and "status" or "ping"
  local ok, err
  if what == "ping" then
    ok, err = self.t:ping()
  elseif kind == "cli" then
    ok, err = self.t:status(nil, CLI_STATUS_TIMEOUT)
  else
    ok, err = self.t:status()
  end
  self.last_sent = now
  if ok then
    self.inflight = { what = what, at = now }
  else
    self.daemon.error = tostring(err)
  end
end

function Panel:on_status(body, now)
  if type(body) ~= "table" or body.job_id ~= nil then return end
  local d = self.daemon
  d.state = "running"
  d.version = body.version or d.version
  d.device, d.model_state = body.device, body.model_state
  d.keep_alive_left = tonumber(body.keep_alive_left)
  d.running = type(body.running) == "table" and #body.running or 0
  d.queued = tonumber(body.queued) or 0
  d.log_file = type(body.log_file) == "string" and body.log_file or nil
  d.at = now
  self.pending = type(body.recent) == "table" and body.recent or {}
  self.pending_at, self.next_rows = 1, {}
  self.mine = jobrecord.all()
end

function Panel:on_event(ev, now)
  if ev.type == "pong" then
    self.pong_at = now
    local d = self.daemon
    if d.state ~= "running" then self.daemon = { state = "running" } end
    self.daemon.version, self.daemon.engines = ev.version, ev.engines
    self.daemon.device, self.daemon.model_state = ev.device, ev.model_state
    if self.inflight and self.inflight.what == "ping" then self.inflight = nil end
  elseif ev.type == "ping_failed" then
    if self.inflight and self.inflight.what == "ping" then self.inflight = nil end
    if self.daemon.state ~= "starting" then self.daemon = { state = "not running", error = ev.message } end
  elseif ev.type == "status" then
    local body = json.decode(ev.json or "")
    if type(body) == "table" and body.job_id == nil then
      if self.inflight and self.inflight.what == "status" then self.inflight = nil end
      self:on_status(body, now)
    end
  elseif ev.type == "status_failed" then
    if self.inflight and self.inflight.what == "status" then self.inflight = nil end
    self.daemon.state = "not answering"
  elseif ev.type == "stopping" then
    self.daemon = { state = "stopping" }
    self.pong_at = -math.huge
    self:say(string.format("the daemon is stopping (%s running job(s) journaled for its next start)",
      tostring(ev.running or 0)))
  elseif ev.type == "error" and (ev.job_id == nil or ev.job_id == "") then
    if ev.code == "unauthorized" then
      self.daemon = { state = "refused the token", error = ev.message }
    else
      self.note = tostring(ev.message)
    end
  end
end

-- Merges at most ROWS_PER_TICK entries of the last status reply; the list shown changes once
-- all are in.
function Panel:merge(now_epoch)
  if not self.pending then return 0 end
  local n = 0
  while n < panel.ROWS_PER_TICK and self.pending_at <= #self.pending do
    local e = self.pending[self.pending_at]
    self.pending_at = self.pending_at + 1
    n = n + 1
    if type(e) == "table" and type(e.id) == "string" then
      local state = type(e.state) == "string" and e.state or "?"
      self.next_rows[#self.next_rows + 1] = {
        id = e.id,
        state = state,
        fraction = math.max(0, math.min(1, tonumber(e.fraction) or 0)),
        stage = type(e.stage) == "string" and e.stage or "",
        message = type(e.message) == "string" and e.message or "",
        code = type(e.code) == "string" and e.code or nil,
        out = type(e.out) == "string" and e.out or "",
        prompt = type(e.prompt) == "string" and e.prompt or "",
        source = type(e.source) == "string" and e.source or "",
        eta = rows.eta(e, now_epoch),
        mine = self.mine[e.id] ~= nil,
        final = FINAL[state] == true,
      }
    end
  end
  if self.pending_at > #self.pending then
    self.rows, self.pending = self.next_rows, nil
  end
  self.most_rows_in_a_tick = math.max(self.most_rows_in_a_tick, n)
  return n
end

---------------------------------------------------------------------------------------------------
-- Commands from the view

function Panel:row(id)
  for _, r in ipairs(self.rows) do
    if r.id == id then return r end
  end
  return nil
end

function Panel:import_again(id)
  local job, stem_set = jobrecord.job(id)
  if not job then return self:say(id .. " was not started from this project: nothing to import it into") end
  local row = self:row(id)
  local dir = (row and row.out ~= "" and row.out) or util.join(job.out, id)
  local mpath = util.join(dir, "manifest.json")
  local text, rerr = util.read_file(mpath)
  local manifest = text and json.decode(text)
  if type(manifest) ~= "table" then
    return self:say(string.format("cannot import %s again: cannot read %s (%s)", id, mpath,
      tostring(rerr or "not JSON")))
  end
  -- The settings of today, as a new run would use them (runner.new): tracks or takes, and a
  -- repeat replaces the stems ReaSAM made for that item and region unless set to keep them.
  local place = settings.get("place")
  local opts = { folder = settings.get("folder"), mute = settings.get("mute_original"),
    batch = util.new_id("again"), import_absent = settings.get("import_absent"),
    place = place == "tracks" and "tracks" or "takes",
    take_residual = place ~= "target_takes", active_take = settings.get("active_take"),
    on_repeat = settings.get("on_repeat") }
  local ok, result, err = pcall(stem_set and importer.import_set or importer.import, job, manifest, opts)
  if not ok then result, err = nil, result end
  if not result then return self:say("import of " .. id .. " failed: " .. tostring(err)) end
  self:say(string.format("imported %s again: %d item(s)", id, #result.items))
end

-- The settings that change how the panel reaches the daemon.
local CONNECTION = { host = true, port = true, transport = true, token_file = true, reasam_command = true }
local function connection()
  local parts = {}
  for name in pairs(CONNECTION) do parts[#parts + 1] = name .. "=" .. tostring(settings.get(name)) end
  table.sort(parts)
  return table.concat(parts, ";")
end

function Panel:command(cmd, now)
  local kind, arg, value = cmd[1], cmd[2], cmd[3]
  if kind == "cancel" then
    if self.t then
      self.t:cancel(arg)
      self:say("cancelling " .. arg)
      self.last_sent = -math.huge
    end
  elseif kind == "import" then
    self:import_again(arg)
  elseif kind == "folder" then
    local row = self:row(arg)
    local dir = row and row.out or ""
    if dir ~= "" and not reaper.file_exists(util.join(dir, "status.json")) then dir = util.dirname(dir) end
    local done, why = opener.open(dir)
    if not done then self:say(why) end
  elseif kind == "log" then
    local path = self.daemon.log_file
    if not (path and util.file_exists(path)) then path = daemon.log_path() end
    local done, why = opener.open(path)
    if not done then self:say(why) end
  elseif kind == "start" then
    local launcher, err = daemon.start()
    if launcher then
      self.launcher = launcher
      self.daemon = { state = "starting" }
      self.start_at = now
      self.last_sent = -math.huge
      self:say("starting the daemon (log: " .. daemon.log_path() .. ")")
    else
      self:say("could not start the daemon: " .. tostring(err))
    end
  elseif kind == "stop" then
    if self.t and self.t.shutdown then self.t:shutdown() end
  elseif kind == "setting" then
    local ok, err = settings.set(arg, value)
    if not ok then
      self.note = err
    else
      self.note = settings.SPEC[arg][4] .. ": " .. settings.format(arg, settings.get(arg))
      if CONNECTION[arg] then self:open_transport() end
    end
  elseif kind == "settings_dialog" then
    local before = connection()
    require("actions").settings_dialog()
    if connection() ~= before then self:open_transport() end
  elseif kind == "close" then
    self.closing = true
  end
end

---------------------------------------------------------------------------------------------------

-- The daemon's launcher ends at once: a non-zero exit code means nothing was started (127 or
-- 9009: the reasam command was not found), said now rather than after the start timeout.
function Panel:check_launcher()
  local rc, out, err = self.launcher:poll()
  if rc == nil then return end
  self.launcher = nil
  if rc == 0 or self.daemon.state ~= "starting" then return end
  local text = util.trim((err or "") ~= "" and err or (out or ""))
  if rc == 127 or rc == 9009 then text = "the reasam command was not found (" .. settings.reasam_command() .. ")" end
  self.daemon = { state = "not running", error = "could not start it: " .. text }
  self:say("could not start the daemon: " .. text)
end

function Panel:step()
  local now = reaper.time_precise()
  if self.launcher then self:check_launcher() end
  if self.t then
    for _, ev in ipairs(self.t:poll(32)) do self:on_event(ev, now) end
  end
  self:ask(now)
  self:merge(os.time())
  for _, cmd in ipairs(self.view:frame(self) or {}) do self:command(cmd, now) end
  return not self.closing
end

function Panel:close()
  if self.closed then return end
  self.closed = true
  if self.view then self.view:close() end
  if self.t then self.t:close() end
  self.t = nil
  spawn.discard_all() -- helpers still running (a launcher, a status) remove their own files
  if panel.current == self then panel.current = nil end
end

-- The view the settings ask for: ReaImGui when it loads, else gfx.
function panel.view()
  local want = settings.get("ui")
  if (want == "auto" or want == "imgui") and reaimgui.available() then
    return require("panel_view_imgui").new(panel.TITLE)
  end
  return require("panel_view_gfx").new(panel.TITLE)
end

-- Opens the panel and keeps it going in the defer loop until it is closed.
function panel.open()
  local self = panel.new()
  panel.current = self
  self:open_transport()
  self.view = panel.view()
  reaper.atexit(function() self:close() end)
  local function tick()
    if self.closed then return end
    local ok, more = xpcall(function() return self:step() end, debug.traceback)
    if not ok then
      reaper.ShowConsoleMsg("ReaSAM job panel: internal error: " .. tostring(more) .. "\n")
      self:close()
    elseif more then
      reaper.defer(tick)
    else
      self:close()
    end
  end
  tick()
  return self
end

return panel
