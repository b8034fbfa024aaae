-- The same actions without sockets: `reasam send --no-wait` through ExecProcess(…, -1), then the
-- job's status.json / manifest.json polled from the defer loop.
local H = require("helpers")
local D = require("daemon_fixture")
local C = require("check")
local wav = require("wav")

describe("actions without sockets (reasam command line)", function()
  local d, dir, song, long_song, model

  setup(function()
    d = D.start()
    dir = H.tmpdir("cli")
    song = dir .. "/song.wav"
    local samples = wav.test_signal(3, 44100, 2)
    wav.write(song, 44100, 2, samples)
    long_song = dir .. "/long.wav"
    wav.write_repeated(long_song, 44100, 2, samples, 50)
  end)

  teardown(function()
    D.stop(d)
    H.rmtree(dir)
    H.cleanup()
  end)

  before_each(function()
    C.forget()
    model = H.model({ media = H.tmpdir("media"), sockets = false })
    D.configure(model, d, { engine = "dsp" })
  end)

  after_each(function()
    for _, s in ipairs(model.scripts) do if s.alive then model.terminate(s) end end
  end)

  local function healthy()
    assert.are.same({}, model.errors)
    assert.are.same({}, model.refresh_violations)
    assert.is_true(model.max_tick < 0.1, ("a tick took %.3f s"):format(model.max_tick))
    for name in pairs(model.missing) do
      assert.is_true(require("reaper_model").OPTIONAL[name] == true, "unknown API: " .. name)
    end
  end

  local function run(action)
    model.run_action(H.action(action))
    model.run_until(function() return not model.running() end, 90)
    assert.is_false(model.running())
  end

  it("separates through `reasam send` and imports aligned stems", function()
    local tr = model.add_track("Drums bus")
    local item = model.add_item(tr, { file = song, position = 4, startoffs = 0.3, length = 2.1, playrate = 1.25 })
    run("Separate selection - drums")
    healthy()
    assert.matches("using `reasam send`", model.console_text())
    local spawned = {}
    for _, e in ipairs(model.exec) do
      assert.are.equal(-1, e.timeout) -- never a blocking ExecProcess
      spawned[#spawned + 1] = e.cmd
    end
    assert.is_true(#spawned >= 2) -- ping, send
    assert.are.same({ "Drums bus", "drums", "drums residual" }, C.track_names(model))
    local ti, ri = model.tracks[2].items[1], model.tracks[3].items[1]
    assert.is_true(math.abs(ti.info.D_POSITION - 4) < 1e-9)
    assert.is_true(math.abs(ti.info.D_LENGTH - 2.1) < 1e-9, ("length %.12f"):format(ti.info.D_LENGTH))
    assert.are.equal(1.25, ti.active.info.D_PLAYRATE)
    C.stems_sum(item, ti, ri)
    assert.are.equal(1, #model.undo)
    -- the helper scripts clean up after themselves
    local p = io.popen("ls '" .. model.resource .. "/ReaSAM/run' | wc -l")
    local left = tonumber(p:read("l"))
    p:close()
    assert.are.equal(0, left)
  end)

  it("shows the daemon's error", function()
    local tr = model.add_track("Mix")
    model.add_item(tr, { file = song, position = 0 })
    run("Separate selection - bass")
    healthy()
    assert.are.equal(1, #model.messages)
    assert.matches("unsupported_prompt", model.messages[1].msg)
    assert.are.equal(1, #model.tracks)
  end)

  it("cancels for real on Esc", function()
    local tr = model.add_track("Long")
    model.add_item(tr, { file = long_song, position = 0 })
    model.time_sel = { 1, 2 }
    model.inputs[1] = { true, "" }
    model.run_action(H.action("Separate selection - sound in time selection"))
    local job
    assert.is_true(model.run_until(function()
      job = model.reaper.GetExtState("ReaSAM", "active_jobs"):match("^([^\t]+)")
      for _, t in ipairs(model.gfx_text) do
        if job and (t == "separating" or t == "preparing") then return true end
      end
      return false
    end, 60))
    model.gfx_keys[1] = 27
    model.run_until(function() return not model.running() end, 60)
    healthy()
    assert.are.equal(1, #model.tracks)
    assert.are.equal(0, #model.undo)
    local ok = false
    for _ = 1, 100 do
      local f = io.open(model.media .. "/ReaSAM/" .. job .. "/status.json")
      local st = f and f:read("a") or ""
      if f then f:close() end
      if st:find('"cancelled"') then ok = true break end
      require("socket").sleep(0.1)
    end
    assert.is_true(ok)
  end)
end)
