-- @noindex
-- Running helper processes without ever blocking REAPER: ExecProcess(cmd, -1) returns at once,
-- so each command is written to a small shell (or cmd) script that records its output and exit
-- code in files, which poll() picks up on later defer ticks.
local reaper = reaper
local util = require("util")

local spawn = {}

local seq = 0

function spawn.run_dir()
  local dir = util.join(reaper.GetResourcePath(), "ReaSAM", "run")
  util.mkdirs(dir)
  return dir
end

-- Removes what helper processes of earlier runs left behind (their names carry their start
-- time: <what>-YYYYmmdd-HHMMSS-...), once they are older than max_age seconds.
function spawn.sweep(max_age)
  if not reaper.EnumerateFiles then return 0 end
  local dir = spawn.run_dir()
  local now = os.time()
  local old = {}
  local i = 0
  while true do
    local name = reaper.EnumerateFiles(dir, i)
    if not name or name == "" then break end
    local y, mo, d, h, mi, sec = name:match("%-(%d%d%d%d)(%d%d)(%d%d)%-(%d%d)(%d%d)(%d%d)%-")
    if y then
      local t = os.time({ year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = tonumber(h),
        min = tonumber(mi), sec = tonumber(sec) })
      if now - t > (max_age or 3600) then old[#old + 1] = util.join(dir, name) end
    end
    i = i + 1
  end
  for _, f in ipairs(old) do os.remove(f) end
  return #old
end

local function dq(path)
  -- ExecProcess splits its command line on spaces and honours double quotes on every platform.
  return '"' .. path .. '"'
end

local function new_base(name)
  seq = seq + 1
  local id = util.new_id(name)
  return util.join(spawn.run_dir(), string.format("%s-%d", id, seq))
end

local function launch(script_path)
  local cmd
  if util.is_windows() then
    cmd = 'cmd.exe /C "' .. dq(script_path) .. '"'
  else
    cmd = "/bin/sh " .. dq(script_path)
  end
  reaper.ExecProcess(cmd, -1)
  return cmd
end

local Handle = {}
Handle.__index = Handle

-- nil while running; else exit code (number), stdout, stderr.
function Handle:poll()
  if self.result then return table.unpack(self.result) end
  local rc_text = util.read_file(self.rc)
  if not rc_text then return nil end
  local rc = tonumber(util.trim(rc_text)) or -1
  local out = util.read_file(self.out) or ""
  local err = util.read_file(self.err) or ""
  self.result = { rc, out, err }
  for _, f in ipairs({ self.rc, self.out, self.err, self.script }) do os.remove(f) end
  return rc, out, err
end

function Handle:age()
  return util.now() - self.started
end

-- Runs args (a list: program first) in the background; returns a handle to poll.
function spawn.command(name, args)
  local base = new_base(name)
  local h = setmetatable({
    out = base .. ".out", err = base .. ".err", rc = base .. ".rc", started = util.now(),
  }, Handle)
  local line = util.command_line(args)
  local text
  if util.is_windows() then
    h.script = base .. ".cmd"
    text = table.concat({
      "@echo off",
      line .. " > " .. dq(h.out) .. " 2> " .. dq(h.err) .. " < NUL",
      "echo %ERRORLEVEL% > " .. dq(h.rc .. ".part"),
      "move /Y " .. dq(h.rc .. ".part") .. " " .. dq(h.rc) .. " > NUL",
      "",
    }, "\r\n")
  else
    h.script = base .. ".sh"
    text = table.concat({
      "#!/bin/sh",
      line .. " > " .. util.sh_quote(h.out) .. " 2> " .. util.sh_quote(h.err) .. " < /dev/null",
      "echo $? > " .. util.sh_quote(h.rc .. ".part"),
      "mv -f " .. util.sh_quote(h.rc .. ".part") .. " " .. util.sh_quote(h.rc),
      "",
    }, "\n")
  end
  local ok, err = util.write_file(h.script, text)
  if not ok then return nil, "cannot write " .. h.script .. ": " .. tostring(err) end
  h.cmd = launch(h.script)
  return h
end

-- Starts a long-running process detached from REAPER (the daemon). Output is appended to
-- log_path; its process id is written to pid_path. Returns the command used.
function spawn.detached(args, log_path, pid_path)
  local base = new_base("start")
  local line = util.command_line(args)
  local script, text
  if util.is_windows() then
    script = base .. ".cmd"
    text = table.concat({
      "@echo off",
      'start "ReaSAM daemon" /MIN ' .. line .. " >> " .. dq(log_path) .. " 2>&1",
      "",
    }, "\r\n")
  else
    script = base .. ".sh"
    local redir = " >> " .. util.sh_quote(log_path) .. " 2>&1 < /dev/null &"
    text = table.concat({
      "#!/bin/sh",
      'cd "${HOME:-/}" 2>/dev/null',
      "if command -v setsid >/dev/null 2>&1; then",
      "  setsid " .. line .. redir,
      "else",
      "  nohup " .. line .. redir,
      "fi",
      "echo $! > " .. util.sh_quote(pid_path),
      'rm -f "$0"',
      "",
    }, "\n")
  end
  local ok, err = util.write_file(script, text)
  if not ok then return nil, "cannot write " .. script .. ": " .. tostring(err) end
  return launch(script)
end

return spawn
