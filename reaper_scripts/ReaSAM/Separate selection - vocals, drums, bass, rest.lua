-- @description Separate selection: vocals, drums, bass, rest
-- @about Separates every selected audio item into vocals, drums, bass and the rest, as four coloured tracks in a folder under the source track; together they sum to the original.
-- @noindex
--
-- Part of the ReaSAM package (see ReaSAM.lua for the version). Shared code lives in lib/.
local dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = dir .. "lib/?.lua;" .. package.path
require("actions").stem_set({ "vocals", "drums", "bass" })
