-- luacheck configuration for the ReaSAM ReaScripts and their busted specs.
std = "lua54"
max_line_length = 120
max_comment_line_length = false
self = false
read_globals = { "reaper", "gfx", "ImGui" }
files["tests/lua"] = {
  std = "+busted",
  globals = { "reaper", "gfx" },
}
exclude_files = { ".venv", "node_modules" }
