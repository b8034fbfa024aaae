-- @description Separate selection: sound in time selection
-- @about Isolates the sound that plays in the time selection (a "+" span prompt, with an optional description) from every selected audio item, over the whole item.
-- @noindex
--
-- Part of the ReaSAM package (see ReaSAM.lua for the version). Shared code lives in lib/.
local dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = dir .. "lib/?.lua;" .. package.path
require("actions").span()
