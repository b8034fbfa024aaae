-- @noindex
-- Opening a file or folder with the operating system's own opener, without waiting for it.
local reaper = reaper
local util = require("util")

local opener = {}

-- The OS opener on a file or folder: SWS's CF_ShellExecute when there, else the platform's own
-- command started through ExecProcess(…, -1) (which never waits). Returns the command or nil, why.
function opener.open(path)
  if path == nil or path == "" then return nil, "nothing to open" end
  if reaper.CF_ShellExecute then
    reaper.CF_ShellExecute(path)
    return "CF_ShellExecute " .. path
  end
  if path:find('"', 1, true) then return nil, "cannot open a path with a double quote: " .. path end
  local cmd
  if util.is_windows() then
    cmd = 'explorer.exe "' .. path .. '"'
  elseif (reaper.GetOS() or ""):match("^OSX") or (reaper.GetOS() or ""):match("^macOS") then
    cmd = '/usr/bin/open "' .. path .. '"'
  else
    cmd = 'xdg-open "' .. path .. '"'
  end
  reaper.ExecProcess(cmd, -1)
  return cmd
end

return opener
