-- No daemon running: the actions start `reasam serve` themselves (both transports), and say
-- clearly when they cannot.
local H = require("helpers")
local D = require("daemon_fixture")
local C = require("check")
local wav = require("wav")

describe("when no daemon runs", function()
  local dir, song
  local started = {}

  setup(function()
    dir = H.tmpdir("start")
    song = dir .. "/song.wav"
    wav.write(song, 44100, 2, (wav.test_signal(2, 44100, 3)))
  end)

  teardown(function()
    for _, pid in ipairs(started) do D.kill(pid) end
    H.rmtree(dir)
    H.cleanup()
  end)

  local function fresh(sockets)
    local ddir = H.tmpdir("ddir")
    local model = H.model({ media = H.tmpdir("media"), sockets = sockets, exec_env = D.env_for(ddir) })
    local port = D.free_port()
    model.set_setting("port", port)
    model.set_setting("token_file", ddir .. "/token")
    model.set_setting("reasam_command", D.reasam())
    model.set_setting("engine", "dsp")
    model.set_setting("ui", "console")
    return model, port, ddir
  end

  for _, sockets in ipairs({ true, false }) do
    local name = sockets and "UDP" or "reasam command line"
    it("starts `reasam serve` and then separates (" .. name .. ")", function()
      local model, port, ddir = fresh(sockets)
      assert.is_nil(D.ping(port, nil, 0.2))
      local tr = model.add_track("Mix")
      local item = model.add_item(tr, { file = song, position = 1 })
      model.run_action(H.action("Separate selection - drums"))
      model.run_until(function() return not model.running() end, 120)
      local pid_file = model.resource .. "/ReaSAM/daemon.pid"
      local pid = D.read_token(pid_file)
      started[#started + 1] = pid
      assert.are.same({}, model.errors)
      assert.is_false(model.running())
      assert.matches("starting `.*reasam serve`", model.console_text())
      assert.are.equal(0, #model.messages, model.messages[1] and model.messages[1].msg)
      assert.are.same({ "Mix", "drums", "drums residual" }, C.track_names(model))
      C.stems_sum(item, model.tracks[2].items[1], model.tracks[3].items[1])
      H.assert_healthy(model) -- never blocks: counted, not timed
      assert.is_true(#model.exec >= 1)
      -- it keeps running for the next action, with its token where the settings say
      assert.is_truthy(D.ping(port, D.read_token(ddir .. "/token"), 1))
      assert.is_true(D.pid_alive(pid))
      if os.getenv("DEBUG_SPEC") then
        print(("max tick %.4f s over %d ticks"):format(model.max_tick, #model.tick_times))
      end
      D.kill(pid)
      H.rmtree(ddir)
    end)
  end

  it("says so when the reasam command does not exist (reasam command line)", function()
    local model = fresh(false)
    model.set_setting("reasam_command", dir .. "/no-such-reasam")
    model.add_item(model.add_track("Mix"), { file = song, position = 0 })
    model.run_action(H.action("Separate selection - drums"))
    model.run_until(function() return not model.running() end, 30)
    assert.are.same({}, model.errors)
    assert.are.equal(1, #model.messages)
    assert.matches("reasam command was not found", model.messages[1].msg)
  end)

  it("gives up with the daemon's log when it does not come up (UDP)", function()
    local model = fresh(true)
    -- a reasam that exists but fails as it starts (a missing one is said at once: transport_edges_spec)
    local broken = dir .. "/broken-reasam"
    local f = assert(io.open(broken, "w"))
    f:write("#!/bin/sh\necho 'reasam: cannot start' >&2\nexit 1\n")
    f:close()
    os.execute("chmod +x '" .. broken .. "'")
    model.set_setting("reasam_command", broken)
    model.set_setting("start_timeout", 2)
    model.add_item(model.add_track("Mix"), { file = song, position = 0 })
    model.run_action(H.action("Separate selection - drums"))
    model.run_until(function() return not model.running() end, 30)
    assert.are.same({}, model.errors)
    assert.are.equal(1, #model.messages)
    assert.matches("did not answer within 2 s", model.messages[1].msg)
    assert.matches("broken%-reasam", model.messages[1].msg)
    assert.matches("reasam: cannot start", model.messages[1].msg) -- the log's tail
  end)

  it("status says the daemon is not answering, without starting it", function()
    for _, sockets in ipairs({ true, false }) do
      local model = fresh(sockets)
      model.run_action(H.action("ReaSAM - status and settings"))
      model.run_until(function() return not model.running() end, 40)
      assert.are.same({}, model.errors)
      assert.are.equal(1, #model.messages)
      assert.matches("Daemon: not answering", model.messages[1].msg)
      assert.matches(sockets and "OSC over UDP" or "no sockets", model.messages[1].msg)
      for _, e in ipairs(model.exec) do assert.is_nil(e.cmd:find("start%-")) end
      assert.is_nil(D.read_token(model.resource .. "/ReaSAM/daemon.pid"))
    end
  end)

  it("does not start anything when starting is turned off", function()
    local model, port = fresh(true)
    model.set_setting("start_daemon", "n")
    model.add_item(model.add_track("Mix"), { file = song, position = 0 })
    model.run_action(H.action("Separate selection - drums"))
    model.run_until(function() return not model.running() end, 30)
    assert.are.equal(1, #model.messages)
    assert.matches("No ReaSAM daemon answers on 127.0.0.1:" .. port, model.messages[1].msg)
    assert.are.equal(0, #model.exec)
  end)
end)
