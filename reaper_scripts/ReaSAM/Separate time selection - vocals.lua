-- @description Separate time selection: vocals
-- @about Separates the vocals of the part of every selected audio item that lies inside the time selection; the stems cover that part only, lined up with the original.
-- @noindex
--
-- Part of the ReaSAM package (see ReaSAM.lua for the version). Shared code lives in lib/.
local dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = dir .. "lib/?.lua;" .. package.path
require("actions").separate("vocals", "time_selection")
