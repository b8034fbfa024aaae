-- @description ReaSAM: status and settings
-- @about Shows whether the daemon runs (version, engines, device, jobs) and edits the settings: port, output folder, engine, quality, folder and mute options, track names.
-- @noindex
--
-- Part of the ReaSAM package (see ReaSAM.lua for the version). Shared code lives in lib/.
local dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = dir .. "lib/?.lua;" .. package.path
require("actions").status()
