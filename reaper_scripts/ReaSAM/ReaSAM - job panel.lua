-- @description ReaSAM: job panel
-- @about A dockable window with the daemon's jobs (this project's and others': queued, running with progress and time left, done, failed, cancelled), per-job cancel, import again, show in folder; the daemon's state with start/stop and its log; and the settings. The separate actions work without it.
-- @noindex
--
-- Part of the ReaSAM package (see ReaSAM.lua for the version). Shared code lives in lib/.
local dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = dir .. "lib/?.lua;" .. package.path
require("panel").open()
