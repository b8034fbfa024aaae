-- @description ReaSAM: cancel jobs
-- @about Cancels every ReaSAM separation in flight; the daemon stops them and removes their partial files.
-- @noindex
--
-- Part of the ReaSAM package (see ReaSAM.lua for the version). Shared code lives in lib/.
local dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = dir .. "lib/?.lua;" .. package.path
require("actions").cancel()
