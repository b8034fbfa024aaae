-- @description Separate selection: vocals
-- @about Separates the vocals of every selected audio item into a new track, with the rest on a "vocals residual" track, lined up with the original.
-- @noindex
--
-- Part of the ReaSAM package (see ReaSAM.lua for the version). Shared code lives in lib/.
local dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = dir .. "lib/?.lua;" .. package.path
require("actions").separate("vocals")
