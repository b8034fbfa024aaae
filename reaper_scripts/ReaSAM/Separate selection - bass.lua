-- @description Separate selection: bass
-- @about Separates the bass of every selected audio item (needs the SAM engine) into a new track, with the rest on a "bass residual" track.
-- @noindex
--
-- Part of the ReaSAM package (see ReaSAM.lua for the version). Shared code lives in lib/.
local dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = dir .. "lib/?.lua;" .. package.path
require("actions").separate("bass")
