local H = require("helpers")

describe("settings", function()
  teardown(function() H.cleanup() end)
  local model, settings

  before_each(function()
    model = H.model({ media = "/tmp/project media" })
    settings = H.lib(model, "settings")
  end)

  it("has defaults matching the daemon", function()
    assert.are.equal(9797, settings.get("port"))
    assert.are.equal("127.0.0.1", settings.get("host"))
    assert.are.equal("auto", settings.get("engine"))
    assert.are.equal("balanced", settings.get("quality"))
    assert.is_false(settings.get("folder"))
    assert.is_true(settings.get("mute_original"))
  end)

  it("stores typed values and refuses bad ones", function()
    assert.is_true(settings.set("port", "9000"))
    assert.are.equal(9000, settings.get("port"))
    assert.is_true(settings.set("folder", true))
    assert.are.equal("y", model.reaper.GetExtState("ReaSAM", "folder"))
    assert.is_true(model.ext_persist["ReaSAM\0folder"])
    local ok, err = settings.set("port", "70000")
    assert.is_nil(ok)
    assert.matches("between 1 and 65535", err)
    ok, err = settings.set("engine", "magic")
    assert.is_nil(ok)
    assert.matches("auto, dsp, sam, spleeter", err)
    ok = settings.set("mute_original", "maybe")
    assert.is_nil(ok)
    -- a value edited by hand into something invalid falls back to the default
    model.reaper.SetExtState("ReaSAM", "quality", "ultra", true)
    assert.are.equal("balanced", settings.get("quality"))
  end)

  it("puts stems in the project's media folder, else beside the project", function()
    assert.are.equal("/tmp/project media/ReaSAM", settings.output_dir())
    model.media = ""
    model.project_file = "/home/u/songs/song.rpp"
    assert.are.equal("/home/u/songs/ReaSAM", settings.output_dir())
    settings.set("out_dir", "/data/stems")
    assert.are.equal("/data/stems", settings.output_dir())
  end)

  it("remembers the ten most recent prompts, newest first, without duplicates", function()
    for i = 1, 12 do settings.remember_prompt("p" .. i) end
    settings.remember_prompt("p5")
    settings.remember_prompt("a; tricky | prompt %")
    local list = settings.recent_prompts()
    assert.are.equal(10, #list)
    assert.are.equal("a; tricky | prompt %", list[1])
    assert.are.equal("p5", list[2])
    assert.are.equal("p12", list[3])
  end)

  it("says where stems go, what a repeat does and the region, with defaults", function()
    assert.are.equal("tracks", settings.get("place"))
    assert.are.equal("target", settings.get("active_take"))
    assert.are.equal("replace", settings.get("on_repeat"))
    assert.are.equal("item", settings.region())
    assert.is_nil(settings.set("place", "lanes"))
    assert.is_true(settings.set("place", "Target_Takes"))
    assert.are.equal("target_takes", settings.get("place"))
    -- a flag stored before the region setting existed still counts, until the region is set
    model.reaper.SetExtState("ReaSAM", "limit_to_time_selection", "y", true)
    assert.are.equal("time_selection", settings.region())
    settings.set("region", "item")
    assert.are.equal("item", settings.region())
    -- the settings dialog shows them, and stays within 16 fields (the most GetUserInputs took in
    -- older REAPER versions)
    local shown = {}
    for _, name in ipairs(settings.EDITABLE) do shown[name] = true end
    assert.is_true(shown.place and shown.active_take and shown.on_repeat and shown.region)
    assert.is_true(#settings.EDITABLE <= 16)
  end)

  it("names tracks from the patterns", function()
    assert.are.equal("a dog", settings.track_name("target", "a dog"))
    assert.are.equal("a dog residual", settings.track_name("residual", "a dog"))
    settings.set("residual_name", "{prompt} (rest) %1")
    assert.are.equal("a dog (rest) %1", settings.track_name("residual", "a dog"))
  end)

  it("finds the token where the daemon writes it", function()
    local home = os.getenv("HOME")
    local xdg = os.getenv("XDG_CONFIG_HOME")
    local want = (xdg and xdg ~= "" and xdg or (home .. "/.config")) .. "/reasam/token"
    assert.are.equal(want, settings.token_path())
    model.os_name = "OSX64"
    assert.are.equal(home .. "/Library/Application Support/ReaSAM/token", settings.token_path())
    settings.set("token_file", "~/tok")
    assert.are.equal(home .. "/tok", settings.token_path())
  end)

  it("runs the reasam command recorded by `reasam install-reaper`", function()
    local dir = model.resource .. "/ReaSAM"
    os.execute("mkdir -p '" .. dir .. "'")
    local f = io.open(dir .. "/reasam-command.txt", "w")
    f:write("/bin/sh\n")
    f:close()
    assert.are.equal("/bin/sh", settings.reasam_command())
    settings.set("reasam_command", "/opt/x/reasam")
    assert.are.equal("/opt/x/reasam", settings.reasam_command())
  end)
end)
