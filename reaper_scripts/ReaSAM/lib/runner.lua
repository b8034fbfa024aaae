-- @noindex
-- One action run: send every request, wait in a defer loop (REAPER never blocks), show
-- progress, import each job as it finishes, cancel for real on Esc or the cancel action.
--
-- Phases: connect (ping / start the daemon) -> wait (submit, follow, import) -> finished.
-- Follow = OSC replies when the transport is UDP, plus the job's status.json / manifest.json on
-- disk (the only source with the CLI transport, a safety net for lost datagrams with UDP).
local reaper = reaper
local util = require("util")
local json = require("json")
local settings = require("settings")
local transport = require("transport")
local daemon = require("daemon")
local importer = require("importer")
local spawn = require("spawn")
local ui = require("ui")
local jobrecord = require("jobrecord")

local runner = {}

local SECTION = settings.SECTION
local REG_KEY = "active_jobs"
local CANCEL_KEY = "cancel_seq"

local RESEND_AFTER = 1.0 -- s without any answer to a request before sending it again (same id)
local MAX_SENDS = 8
local FILE_POLL_CLI = 0.25
local FILE_POLL_UDP = 1.0
local STALL_PING = 15 -- s without news before checking the daemon is alive
local STALL_FAIL = 45 -- s without news or pong before giving up
local CANCEL_WAIT = 20 -- s to wait for the daemon to confirm a cancel (it stops at the engine's next step)
local PEAK_BUDGET = 0.01 -- s of peak building per tick

---------------------------------------------------------------------------------------------------
-- Cross-script registry (non-persistent ExtState): jobs in flight, and a cancel signal.

function runner.active_jobs()
  local out = {}
  for _, line in ipairs(util.split(reaper.GetExtState(SECTION, REG_KEY), "\n")) do
    local id, out_dir, kind = line:match("^([^\t]+)\t([^\t]*)\t?(.*)$")
    if id then out[#out + 1] = { id = id, out = out_dir, transport = kind } end
  end
  return out
end

local function write_registry(list)
  local lines = {}
  for _, j in ipairs(list) do lines[#lines + 1] = j.id .. "\t" .. j.out .. "\t" .. (j.transport or "") end
  reaper.SetExtState(SECTION, REG_KEY, table.concat(lines, "\n"), false)
end

local function register(job, kind)
  local list = runner.active_jobs()
  list[#list + 1] = { id = job.id, out = job.out, transport = kind }
  write_registry(list)
end

local function unregister(job)
  local list = {}
  for _, j in ipairs(runner.active_jobs()) do
    if j.id ~= job.id then list[#list + 1] = j end
  end
  write_registry(list)
end

function runner.cancel_seq()
  return tonumber(reaper.GetExtState(SECTION, CANCEL_KEY)) or 0
end

function runner.signal_cancel()
  reaper.SetExtState(SECTION, CANCEL_KEY, tostring(runner.cancel_seq() + 1), false)
end

---------------------------------------------------------------------------------------------------
local Run = {}
Run.__index = Run

-- "empty": the daemon found nothing like the prompt, and nothing was imported.
local FINAL = { imported = true, error = true, cancelled = true, empty = true }

-- opts: { title, prompt_text, prompt_name, requests, notes, prompts }. `prompts` (two or more)
-- makes a stem set. Every run makes one undo point, whatever the number of items: its jobs are
-- imported once all have finished, one per tick, then one undo point holds them all.
function runner.new(opts)
  local self = setmetatable({
    id = util.new_id("batch"),
    title = opts.title or "ReaSAM",
    notes = opts.notes or {},
    jobs = {},
    peaks = {},
    phase = "connect",
    cancel_seq0 = runner.cancel_seq(),
    engine = settings.get("engine"),
    quality = settings.get("quality"),
    out = settings.output_dir(),
    folder = settings.get("folder"),
    mute = settings.get("mute_original"),
    import_absent = settings.get("import_absent"),
    stem_set = opts.prompts ~= nil and #opts.prompts > 1,
    place = settings.get("place") == "tracks" and "tracks" or "takes",
    take_residual = settings.get("place") ~= "target_takes",
    active_take = settings.get("active_take"),
    on_repeat = settings.get("on_repeat"),
    last_news = nil,
    last_file_poll = 0,
    errors = {},
    ticks = 0,
  }, Run)
  for i, req in ipairs(opts.requests) do
    self.jobs[i] = {
      id = util.new_id("reaper"),
      request = req,
      prompt_text = opts.prompt_text,
      prompt_name = opts.prompt_name,
      prompts = opts.prompts,
      engine = self.engine,
      quality = self.quality,
      out = self.out,
      state = "new",
      fraction = 0,
      stage = "waiting for the daemon",
      sends = 0,
    }
  end
  return self
end

function Run:job(id)
  for _, j in ipairs(self.jobs) do
    if j.id == id then return j end
  end
  return nil
end

function Run:job_dir(job)
  return util.join(job.out, job.id)
end

function Run:set_final(job, state, message)
  if FINAL[job.state] then return end
  job.state = state
  job.message = message
  if state == "error" then
    self.errors[#self.errors + 1] = job.request.label .. ": " .. (message or "failed")
  end
  unregister(job)
end

function Run:fail_all(message)
  for _, job in ipairs(self.jobs) do
    if not FINAL[job.state] then
      if job.state ~= "new" and self.t then self.t:cancel(job.id) end
      self:set_final(job, "error", message)
    end
  end
end

---------------------------------------------------------------------------------------------------
-- Events from the transport

function Run:on_event(ev, now)
  if self.conn then self.conn:on_event(ev) end
  if ev.type == "pong" then
    self.last_news = now
    self.ping_pending = nil
    return
  end
  if ev.type == "status" then
    local st = json.decode(ev.json or "")
    local job = type(st) == "table" and type(st.job_id) == "string" and self:job(st.job_id)
    if job and not FINAL[job.state] and job.state ~= "done" then
      self.last_news = now
      job.last_news = now
      self:apply_status(job, st, now)
    end
    return
  end
  if ev.type == "error" and (ev.job_id == nil or ev.job_id == "") then
    if ev.code == "unauthorized" and self.phase == "wait" then
      self:fail_all("the daemon refused the token in " .. settings.token_path() .. ": " .. (ev.message or ""))
    end
    return
  end
  local job = ev.job_id and self:job(ev.job_id)
  if not job then return end
  if ev.type == "cancel_result" then
    -- (cli) `reasam cancel` ended. A confirmed cancel shows in status.json; anything else
    -- (not_found while `reasam send` is still starting, no answer) is asked again from step().
    job.cancel_inflight = nil
    if ev.rc == 0 and ev.state == "cancelled" then self:set_final(job, "cancelled", "cancelled") end
    return
  end
  self.last_news = now
  job.last_news = now
  if FINAL[job.state] then return end
  if ev.type == "accepted" then
    -- (cli) the job exists in the daemon only now: a cancel sent before may have found nothing.
    if job.state == "cancelling" then job.cancel_now = true end
    if job.state == "sent" then
      job.state = "queued"
      job.stage = (ev.queue_position and ev.queue_position > 0)
        and string.format("queued (%d ahead)", ev.queue_position) or "queued"
    end
  elseif ev.type == "progress" then
    if job.state == "sent" or job.state == "queued" or job.state == "running" then
      job.state = "running"
      job.fraction = math.max(0, math.min(1, ev.fraction or 0))
      job.stage = ev.stage ~= "" and ev.stage or "running"
    end
  elseif ev.type == "done" then
    if job.state == "cancelling" then
      self:set_final(job, "cancelled", "cancelled (finished before the cancel arrived; not imported)")
    elseif job.state ~= "done" then
      job.state = "done"
      job.fraction = 1
      job.stage = "importing"
      job.manifest_path = ev.manifest
    end
  elseif ev.type == "error" then
    if job.state == "cancelling" and ev.code == "not_found" then
      self:set_final(job, "cancelled", "cancelled")
    else
      self:set_final(job, "error", string.format("%s (%s)", ev.message or "failed", ev.code or "error"))
    end
  elseif ev.type == "cancelled" then
    self:set_final(job, "cancelled", "cancelled")
  end
end

-- A status object (status.json, or the daemon's /reasam/status reply for one job).
function Run:apply_status(job, st, now)
  local state = st.state
  if state == "done" then
    local mpath = type(st.manifest_path) == "string" and st.manifest_path
      or util.join(self:job_dir(job), "manifest.json")
    if util.file_exists(mpath) then
      self:on_event({ type = "done", job_id = job.id, manifest = mpath }, now)
    end
  elseif state == "error" then
    local code = (type(st.code) == "string") and st.code or "error"
    self:on_event({ type = "error", job_id = job.id, code = code, message = tostring(st.message or "") }, now)
  elseif state == "cancelled" then
    self:on_event({ type = "cancelled", job_id = job.id }, now)
  elseif state == "running" or state == "queued" then
    if job.state == "sent" then job.state = "queued" end
    if state == "running" and job.state ~= "cancelling" then
      job.state = "running"
      job.fraction = tonumber(st.fraction) or job.fraction
      job.stage = (type(st.stage) == "string" and st.stage ~= "") and st.stage or "running"
    elseif job.state == "queued" then
      job.stage = "queued"
    end
  end
end

-- status.json / manifest.json: the record every transport can read.
function Run:poll_files(now)
  local every = self.t.kind == "cli" and FILE_POLL_CLI or FILE_POLL_UDP
  if now - self.last_file_poll < every then return end
  self.last_file_poll = now
  for _, job in ipairs(self.jobs) do
    if job.state ~= "new" and not FINAL[job.state] and job.state ~= "done" then
      local text = util.read_file(util.join(self:job_dir(job), "status.json"))
      local st = text and json.decode(text)
      if type(st) == "table" and st.job_id == job.id then
        job.file_state = st.state
        if text ~= job.last_status_text then
          job.last_status_text = text
          self.last_news = now
          job.last_news = now
        end
        self:apply_status(job, st, now)
      end
    end
  end
end

---------------------------------------------------------------------------------------------------

function Run:submit(job, now)
  job.sends = job.sends + 1
  job.sent_at = now
  local ok, err = self.t:separate(job)
  if not ok then
    self:set_final(job, "error", "cannot send the request: " .. tostring(err))
    return
  end
  if job.state == "new" then
    job.state = "sent"
    job.stage = "sent"
    job.last_news = now
    register(job, self.t.kind)
    jobrecord.remember(job, self.stem_set) -- for the job panel's "import again"
  end
end

-- muted: the stem went on a muted "<name> (not found)" track (a set keeps its sum); else it was
-- not imported.
function Run:not_found(job, names, muted)
  for _, name in ipairs(names) do
    local line = string.format("nothing like '%s' found in %s", name, job.request.label)
    local what = muted and string.format("put on the muted track '%s (not found)' so that the tracks still sum "
      .. "to the original", name) or "not imported"
    reaper.ShowConsoleMsg("ReaSAM: " .. line .. " (" .. what .. "; the setting 'Import stems where nothing was "
      .. "found' imports such stems anyway)\n")
    self.notes[#self.notes + 1] = line
  end
end

function Run:import_job(job)
  local mpath = job.manifest_path
  if not mpath or mpath == "" then mpath = util.join(self:job_dir(job), "manifest.json") end
  local text, rerr = util.read_file(mpath)
  local manifest, jerr
  if text then manifest, jerr = json.decode(text) end
  if not manifest then
    self:set_final(job, "error", "cannot read the manifest " .. mpath .. ": " .. tostring(rerr or jerr))
    return
  end
  local opts = { folder = self.folder, mute = self.mute, batch = self.id, import_absent = self.import_absent,
    undo = false, place = self.place, take_residual = self.take_residual, active_take = self.active_take,
    on_repeat = self.on_repeat }
  local result, err
  if self.stem_set then
    result, err = importer.import_set(job, manifest, opts)
    if result then self:not_found(job, result.skipped, not result.nothing) end
  else
    local target = importer.stems(manifest)
    if target and not importer.found(target) and not self.import_absent then
      self:not_found(job, { job.prompt_name })
      result = { nothing = true }
    else
      result, err = importer.import(job, manifest, opts)
    end
  end
  -- (the importer made changes, or made and undid them: the run's undo point covers them)
  if not (result and result.nothing) then self.touched = true end
  if not result then
    self:set_final(job, "error", "import failed: " .. tostring(err))
    return
  end
  job.result = result
  if result.fallback and not self.fallback_said then
    self.fallback_said = true
    reaper.ShowConsoleMsg("ReaSAM: stems went on new tracks instead of takes: " .. result.fallback .. "\n")
  end
  if (result.left or 0) > 0 then
    self.notes[#self.notes + 1] = string.format("%s: %d earlier stem take(s) left as they were (no new stem took "
      .. "their place, and a script cannot remove a take: delete it by hand if it is not wanted)",
      job.request.label, result.left)
  end
  if result.nothing then
    job.stage = "nothing found"
    self:set_final(job, "empty", "nothing found")
    return
  end
  job.stage = "imported"
  self:set_final(job, "imported")
  if settings.get("peaks") and reaper.PCM_Source_BuildPeaks then
    for _, src in ipairs(result.sources) do self.peaks[#self.peaks + 1] = { src = src, mode = 0 } end
  end
end

-- One finished job imported per tick keeps every tick short. A Lua error in an import (a
-- malformed manifest) fails that job only. The jobs are imported once all have finished,
-- without undo blocks (a block cannot span defer ticks), and after the last one a
-- single undo point holds every change: REAPER's undo history is a list of project states, so
-- Undo_OnStateChangeEx records everything changed since the previous point.
function Run:import_one()
  local next_job
  for _, job in ipairs(self.jobs) do
    if job.state == "done" then
      next_job = next_job or job
    elseif not FINAL[job.state] then
      return
    end
  end
  if next_job then
    local ok, err = pcall(self.import_job, self, next_job)
    if not ok then self:set_final(next_job, "error", "import failed: " .. tostring(err)) end
  end
  if not self.touched or self.undo_made then return end
  for _, job in ipairs(self.jobs) do
    if job.state == "done" then return end
  end
  self.undo_made = true
  reaper.Undo_OnStateChangeEx("ReaSAM: separate " .. self.jobs[1].prompt_name, -1, -1)
end

-- Peaks for imported sources, a little per tick: BuildPeaks(src, 0) starts, 1 advances until it
-- returns 0, 2 finishes.
function Run:build_peaks(now)
  local deadline = now + PEAK_BUDGET
  while #self.peaks > 0 and reaper.time_precise() < deadline do
    local p = self.peaks[1]
    -- A source freed since the import (the user deleted the stem, or undid it) is left alone:
    -- BuildPeaks on a freed source could crash REAPER.
    if reaper.ValidatePtr2 and not reaper.ValidatePtr2(0, p.src, "PCM_source*") then
      p.mode = 3
    elseif p.mode == 0 then
      local need = reaper.PCM_Source_BuildPeaks(p.src, 0)
      p.mode = (need ~= 0) and 1 or 3
    elseif p.mode == 1 then
      if reaper.PCM_Source_BuildPeaks(p.src, 1) == 0 then p.mode = 2 end
    elseif p.mode == 2 then
      reaper.PCM_Source_BuildPeaks(p.src, 2)
      p.mode = 3
    end
    if p.mode == 3 then table.remove(self.peaks, 1) end
  end
end

function Run:send_cancel(job, now)
  job.cancel_sent = now
  job.cancel_now = nil
  if not self.t then return end
  local ok = self.t:cancel(job.id)
  -- A `reasam cancel` process reports back (cancel_result); a datagram does not.
  job.cancel_inflight = ok and self.t.kind == "cli" or nil
end

-- Whether a cancel should be sent again now. UDP: every RESEND_AFTER until confirmed (the
-- daemon answers a cancel of a finished job with its final state). CLI: while status.json says
-- queued or running, or does not exist yet (`reasam send` may still be starting, and a cancel
-- that arrives before it finds nothing), once the previous `reasam cancel` has ended.
function Run:cancel_due(job, now)
  if self.t.kind ~= "cli" then return now - job.cancel_sent > RESEND_AFTER end
  if job.cancel_inflight then return false end
  local st = job.file_state
  if st ~= nil and st ~= "queued" and st ~= "running" then return false end
  return job.cancel_now or now - job.cancel_sent > RESEND_AFTER
end

function Run:cancel(reason)
  if self.cancelling then return end
  self.cancelling = true
  self.cancel_reason = reason
  -- The window closes at once; the cancels go on being sent (and confirmed) in the background.
  if self.view then
    self.view:close()
    self.view = nil
  end
  local now = reaper.time_precise()
  local asked = 0
  for _, job in ipairs(self.jobs) do
    if job.state == "new" then
      self:set_final(job, "cancelled", "cancelled")
    elseif job.state == "done" then
      self:set_final(job, "cancelled", "cancelled (not imported)")
    elseif not FINAL[job.state] then
      job.state = "cancelling"
      job.stage = "cancelling"
      job.cancel_at = now
      self:send_cancel(job, now)
      asked = asked + 1
    end
  end
  if asked > 0 then
    reaper.ShowConsoleMsg(string.format("ReaSAM: %s: cancelling %d job%s (%s); the daemon confirms in the "
      .. "background\n", self.title, asked, asked == 1 and "" or "s", reason or "cancel"))
  else
    reaper.ShowConsoleMsg(string.format("ReaSAM: %s: cancelled (%s)\n", self.title, reason or "cancel"))
  end
end

function Run:rows()
  local rows = {}
  for _, job in ipairs(self.jobs) do
    local state = job.stage
    if job.state == "error" then state = "error: " .. (job.message or "") end
    if job.state == "cancelled" then state = job.message or "cancelled" end
    local fraction
    if job.state == "running" or job.state == "queued" or job.state == "done" or job.state == "imported" then
      fraction = job.state == "imported" and 1 or job.fraction
    end
    rows[#rows + 1] = { text = job.prompt_name .. ": " .. job.request.label, fraction = fraction, state = state }
  end
  return rows
end

function Run:finished()
  for _, job in ipairs(self.jobs) do
    if not FINAL[job.state] then return false end
  end
  return #self.peaks == 0
end

-- One defer tick. Returns true while there is more to do.
function Run:step()
  local now = reaper.time_precise()
  self.ticks = self.ticks + 1
  if not self.cancelling and runner.cancel_seq() ~= self.cancel_seq0 then
    self:cancel("from the cancel action")
  end

  if self.t then
    for _, ev in ipairs(self.t:poll()) do self:on_event(ev, now) end
  end

  if self.phase == "connect" then
    if self.cancelling then
      self:fail_all("cancelled")
    else
      local state = self.conn:step(now)
      if state == "ready" then
        self.phase = "wait"
        self.last_news = now
        for _, job in ipairs(self.jobs) do
          if job.state == "new" then
            job.stage = "sending"
            self:submit(job, now)
          end
        end
      elseif state == "failed" then
        self:fail_all(self.conn.error)
      else
        for _, job in ipairs(self.jobs) do
          job.stage = state == "starting" and "starting the daemon" or "looking for the daemon"
        end
      end
    end
  elseif self.phase == "wait" then
    self:poll_files(now)
    for _, job in ipairs(self.jobs) do
      if job.state == "sent" and now - job.sent_at > RESEND_AFTER then
        if job.sends >= MAX_SENDS then
          self:set_final(job, "error", "the daemon did not answer the request")
        elseif self.t.kind == "udp" then
          self:submit(job, now) -- same id: the daemon never starts it twice
        end
      elseif job.state == "cancelling" then
        if now - job.cancel_at > CANCEL_WAIT then
          reaper.ShowConsoleMsg(string.format("ReaSAM: %s: the daemon did not confirm the cancel of %s; it may "
            .. "still finish (%s: not imported; its files would be in %s)\n", self.title, job.id, job.request.label,
            self:job_dir(job)))
          self:set_final(job, "cancelled", "cancel sent; the daemon did not confirm it")
        elseif self:cancel_due(job, now) then
          self:send_cancel(job, now)
        end
      end
    end
    -- Is the daemon still there?
    local busy = false
    for _, job in ipairs(self.jobs) do
      if job.state == "queued" or job.state == "running" then busy = true end
    end
    if busy and self.last_news then
      if now - self.last_news > STALL_FAIL then
        self:fail_all("the daemon stopped answering (see " .. daemon.log_path() .. ")")
      elseif now - self.last_news > STALL_PING and (not self.ping_pending or now - self.ping_pending > 5) then
        self.ping_pending = now
        if self.t.kind == "udp" then
          self.t:ping()
          for _, job in ipairs(self.jobs) do
            if job.state == "queued" or job.state == "running" then self.t:status(job.id) end
          end
        else
          self.t:ping()
        end
      end
    end
    self:import_one()
    self:build_peaks(now)
  end

  if self.view then
    local action = self.view:update(self:rows(), self.cancelling and "Cancelling..." or nil)
    if action == "cancel" and not self.cancelling then self:cancel("from the progress window") end
  end

  return not self:finished()
end

function Run:close()
  if self.closed then return end
  self.closed = true
  if self.view then self.view:close() end
  if self.t then self.t:close() end
  spawn.discard_all() -- helpers still running (a cancel, a late ping) remove their own files
end

function Run:summary()
  local imported, cancelled = 0, 0
  for _, job in ipairs(self.jobs) do
    if job.state == "imported" then imported = imported + 1 end
    if job.state == "cancelled" then cancelled = cancelled + 1 end
  end
  return imported, cancelled
end

function Run:report()
  local imported, cancelled = self:summary()
  local lines = {}
  lines[#lines + 1] = string.format("ReaSAM: %s: %d imported, %d failed, %d cancelled", self.title, imported,
    #self.errors, cancelled)
  for _, n in ipairs(self.notes) do lines[#lines + 1] = "  note: " .. n end
  for _, e in ipairs(self.errors) do lines[#lines + 1] = "  error: " .. e end
  reaper.ShowConsoleMsg(table.concat(lines, "\n") .. "\n")
  if #self.errors > 0 then
    local msg = "ReaSAM could not separate:\n\n" .. table.concat(self.errors, "\n\n")
    if #self.notes > 0 then msg = msg .. "\n\nNotes:\n" .. table.concat(self.notes, "\n") end
    reaper.ShowMessageBox(msg, "ReaSAM", 0)
  end
end

-- Take FX are not part of the source: the stems are separated from what the take plays before
-- its FX (the stems' takes get no FX). Said once per action, in the console.
function Run:warn_take_fx()
  if not reaper.TakeFX_GetCount then return end
  for _, job in ipairs(self.jobs) do
    local take = job.request.take
    if take and reaper.TakeFX_GetCount(take) > 0 then
      reaper.ShowConsoleMsg("ReaSAM: " .. job.request.label .. " has take FX: the stems are separated from its "
        .. "source before the take FX and get no FX (copy the FX to the stems if you want them)\n")
      return
    end
  end
end

-- Starts the run: connects, then keeps itself going with reaper.defer until every job is done.
function Run:start()
  local t, note = transport.open()
  if not t then
    self:fail_all(note)
    self:report()
    return self
  end
  self.t = t
  self:warn_take_fx()
  self.conn = daemon.connector(t, { start = settings.get("start_daemon") })
  self.view = ui.open(self.title)
  util.mkdirs(self.out)
  reaper.atexit(function()
    -- REAPER ends the script (user terminated it, or REAPER quits): do not leave jobs running.
    if not self.closed then
      for _, job in ipairs(self.jobs) do
        if not FINAL[job.state] and job.state ~= "new" then
          self.t:cancel(job.id)
          unregister(job)
        end
      end
      self:close()
    end
  end)
  local function tick()
    local ok, more = xpcall(function() return self:step() end, debug.traceback)
    if not ok then
      self:fail_all("internal error: " .. tostring(more))
      self:close()
      self:report()
      return
    end
    if more then
      reaper.defer(tick)
    else
      self:close()
      self:report()
    end
  end
  tick()
  return self
end

return runner
