-- @noindex
-- Running helper processes without ever blocking REAPER: ExecProcess(cmd, -1) returns at once,
-- so each command is written to a small shell (or cmd) script that records its output and exit
-- code in files, which poll() picks up on later defer ticks. A helper whose result is no longer
-- wanted (the script ends, the job was cancelled) is discarded: it still runs to its end, then
-- removes its own files. Only the helpers this script started are touched: another script's
-- (another Lua state, its own copy of this module) keep theirs.
local reaper = reaper
local util = require("util")

local spawn = {}

local seq = 0
local live = {} -- handle -> true, until its result is read or it is discarded

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

local function new_base(name)
  seq = seq + 1
  local id = util.new_id(name)
  return util.join(spawn.run_dir(), string.format("%s-%d", id, seq))
end

-- Quotes every value of a table of paths (util.quote); nil, message when one cannot be.
local function quoted(paths)
  local out = {}
  for k, v in pairs(paths) do
    local q, err = util.quote(v)
    if not q then return nil, err end
    out[k] = q
  end
  return out
end

-- The command line that runs a script written by this module. ExecProcess splits it on spaces
-- and honours double quotes on every platform (no shell, so no single quotes).
function spawn.launch_command(script_path)
  if util.is_windows() then
    -- cmd /C strips the outer pair of quotes; /D skips AutoRun commands.
    return 'cmd.exe /D /C ""' .. script_path .. '""'
  end
  return '/bin/sh "' .. script_path .. '"'
end

local function launch(script_path)
  local cmd = spawn.launch_command(script_path)
  reaper.ExecProcess(cmd, -1)
  return cmd
end

-- The script that runs args and records stdout, stderr and the exit code in files.out,
-- files.err and files.rc (written last, through a rename, so a poller never sees half of it).
-- When files.forget exists once the command has ended (the owner discarded it), the script
-- removes its files, files.extra and itself instead of leaving them for a poller.
-- Returns its text, or nil, message when an argument cannot be passed on this platform.
function spawn.command_script(args, files)
  local line, err = util.command_line(args)
  if not line then return nil, err end
  local paths = { out = files.out, err = files.err, rc = files.rc, part = files.rc .. ".part",
    forget = files.forget or (files.rc .. ".forget") }
  for i, f in ipairs(files.extra or {}) do paths[i] = f end
  local q, qerr = quoted(paths)
  if not q then return nil, qerr end
  local gone = { q.out, q.err, q.rc, q.forget }
  for i = 1, #(files.extra or {}) do gone[#gone + 1] = q[i] end
  if util.is_windows() then
    return table.concat({
      "@echo off",
      line .. " > " .. q.out .. " 2> " .. q.err .. " < NUL",
      "echo %ERRORLEVEL% > " .. q.part,
      "move /Y " .. q.part .. " " .. q.rc .. " > NUL",
      "if not exist " .. q.forget .. " goto :eof",
      "del /F /Q " .. table.concat(gone, " "),
      '(goto) 2>nul & del "%~f0"',
      "",
    }, "\r\n")
  end
  return table.concat({
    "#!/bin/sh",
    line .. " > " .. q.out .. " 2> " .. q.err .. " < /dev/null",
    "echo $? > " .. q.part,
    "mv -f " .. q.part .. " " .. q.rc,
    "if [ -e " .. q.forget .. " ]; then rm -f " .. table.concat(gone, " ") .. ' "$0"; fi',
    "",
  }, "\n")
end

local Handle = {}
Handle.__index = Handle

local function remove_files(h)
  for _, f in ipairs({ h.rc, h.out, h.err, h.script, h.forget }) do os.remove(f) end
  for _, f in ipairs(h.extra) do os.remove(f) end
end

-- nil while running; else exit code (number), stdout, stderr.
function Handle:poll()
  if self.result then return table.unpack(self.result) end
  if self.discarded then return nil end
  local rc_text = util.read_file(self.rc)
  if not rc_text then return nil end
  local rc = tonumber(util.trim(rc_text)) or -1
  local out = util.read_file(self.out) or ""
  local err = util.read_file(self.err) or ""
  self.result = { rc, out, err }
  live[self] = nil
  remove_files(self)
  return rc, out, err
end

-- The result is no longer wanted: the process runs on, and its files go when it ends (now, if it
-- has). The forget mark is made before looking for the exit code, and the script writes the exit
-- code before looking for the mark, so one of the two always removes the files.
function Handle:discard()
  live[self] = nil
  if self.result or self.discarded then return end
  self.discarded = true
  util.write_file(self.forget, "")
  if util.file_exists(self.rc) then remove_files(self) end
end

-- Discards every helper this script started and has not read (at the script's end).
function spawn.discard_all()
  local n = 0
  for h in pairs(live) do
    h:discard()
    n = n + 1
  end
  return n
end

-- Runs args (a list: program first) in the background; returns a handle to poll, or nil, message
-- (nothing is started then). opts.extra: files the helper's files include (removed with them).
function spawn.command(name, args, opts)
  local line_ok, qerr = util.command_line(args)
  if not line_ok then return nil, qerr end
  local base = new_base(name)
  local h = setmetatable({ out = base .. ".out", err = base .. ".err", rc = base .. ".rc", forget = base .. ".forget",
    extra = opts and opts.extra or {} }, Handle)
  h.script = base .. (util.is_windows() and ".cmd" or ".sh")
  local text, terr = spawn.command_script(args, h)
  if not text then return nil, terr end
  local ok, err = util.write_file(h.script, text)
  if not ok then return nil, "cannot write " .. h.script .. ": " .. tostring(err) end
  h.cmd = launch(h.script)
  live[h] = true
  return h
end

-- The scripts that start a long-running process detached from REAPER: { launcher = text,
-- runner = text or nil }. The process's stdout and stderr are appended to log_path and its
-- process id is written to pid_path. The launcher first looks for the program and, when it is
-- not there, ends at once with the shell's "command not found" code (127; 9009 on Windows)
-- instead of starting something that can only fail where nobody sees it.
--   POSIX: the launcher starts it with setsid (or nohup) in the background and writes $!.
--   Windows: the launcher has PowerShell's Start-Process run runner_path (a .cmd that runs the
--   process with its output redirected) hidden, and writes that cmd.exe's process id: the
--   process is its child (`taskkill /T /PID <pid>` ends both).
function spawn.detached_scripts(args, log_path, pid_path, runner_path)
  local line, err = util.command_line(args)
  if not line then return nil, err end
  local q, qerr = quoted({ log = log_path, pid = pid_path, program = args[1] })
  if not q then return nil, qerr end
  if util.is_windows() then
    local function batch(s) return (s:gsub("%%", "%%%%")) end -- literal text in a .cmd line
    local program = util.ps_quote(args[1])
    local ps = "if (-not (Get-Command -Name " .. program .. " -ErrorAction SilentlyContinue)) { "
      .. "[Console]::Error.WriteLine('not found: ' + " .. program .. "); exit 9009 }; "
      .. "$p = Start-Process -FilePath " .. util.ps_quote(runner_path) .. " -WindowStyle Hidden -PassThru; "
      .. "[IO.File]::WriteAllText(" .. util.ps_quote(pid_path) .. ", [string]$p.Id)"
    return {
      runner = table.concat({
        "@echo off",
        'cd /D "%USERPROFILE%"',
        line .. " >> " .. q.log .. " 2>&1 < NUL",
        "",
      }, "\r\n"),
      launcher = table.concat({
        "@echo off",
        'powershell.exe -NoProfile -NonInteractive -WindowStyle Hidden -Command "' .. batch(ps) .. '"',
        "exit /b %ERRORLEVEL%",
        "",
      }, "\r\n"),
    }
  end
  local redir = " >> " .. q.log .. " 2>&1 < /dev/null &"
  return {
    launcher = table.concat({
      "#!/bin/sh",
      'cd "${HOME:-/}" 2>/dev/null',
      -- (a path must be an executable file; a bare name is looked up in PATH)
      "case " .. q.program .. " in */*) [ -f " .. q.program .. " ] && [ -x " .. q.program .. " ] ;; "
        .. "*) command -v " .. q.program .. " >/dev/null 2>&1 ;; esac || "
        .. "{ echo \"not found: \"" .. q.program .. " >&2; exit 127; }",
      "if command -v setsid >/dev/null 2>&1; then",
      "  setsid " .. line .. redir,
      "else",
      "  nohup " .. line .. redir,
      "fi",
      "echo $! > " .. q.pid,
      "",
    }, "\n"),
  }
end

-- Starts a long-running process detached from REAPER (the daemon), see detached_scripts. The
-- launcher runs as a helper (spawn.command): poll its handle for the launcher's exit code (127
-- or 9009: the program was not found). Returns the handle, or nil, message.
function spawn.detached(args, log_path, pid_path)
  local base = new_base("start")
  local windows = util.is_windows()
  local launcher = base .. (windows and ".cmd" or ".sh")
  local runner = windows and (base .. "-run.cmd") or nil
  local scripts, err = spawn.detached_scripts(args, log_path, pid_path, runner)
  if not scripts then return nil, err end
  if scripts.runner then
    local ok, werr = util.write_file(runner, scripts.runner)
    if not ok then return nil, "cannot write " .. runner .. ": " .. tostring(werr) end
  end
  local ok, werr = util.write_file(launcher, scripts.launcher)
  if not ok then return nil, "cannot write " .. launcher .. ": " .. tostring(werr) end
  local run = windows and { "call", launcher } or { "/bin/sh", launcher }
  return spawn.command("launch", run, { extra = { launcher } })
end

return spawn
