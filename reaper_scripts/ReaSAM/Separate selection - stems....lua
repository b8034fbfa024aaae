-- @description Separate selection: stems...
-- @about Asks which stems (vocals, drums, bass, ... plus any free text; remembers the last choice) and separates every selected audio item into one track per stem plus the rest, in a folder under the source track.
-- @noindex
--
-- Part of the ReaSAM package (see ReaSAM.lua for the version). Shared code lives in lib/.
local dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = dir .. "lib/?.lua;" .. package.path
require("actions").stems()
