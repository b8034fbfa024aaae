-- @description Separate selection: custom prompt
-- @about Asks what to isolate ("a dog barking", "snare"), remembers recent prompts, and separates it from every selected audio item.
-- @noindex
--
-- Part of the ReaSAM package (see ReaSAM.lua for the version). Shared code lives in lib/.
local dir = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or ""
package.path = dir .. "lib/?.lua;" .. package.path
require("actions").custom()
