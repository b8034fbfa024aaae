-- The rough edges of talking to the daemon, over both transports (OSC over UDP through LuaSocket,
-- and the fallback that runs `reasam` helper processes and polls their files): a missing reasam
-- command is reported at once, a missing LuaSocket is one console line, the helper files go away
-- at exit and after a cancel, and a cancel closes the window at once and finishes in the
-- background. One real daemon for the file; the model's clock is moved on instead of waiting.
local H = require("helpers")
local D = require("daemon_fixture")
local wav = require("wav")
local socket = require("socket")

local TRANSPORTS = {
  { name = "UDP", sockets = true },
  { name = "the reasam command line (no sockets)", sockets = false },
}

local function names_in(dir)
  local out = {}
  local p = io.popen("ls -1A '" .. dir .. "' 2>/dev/null")
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  table.sort(out)
  return out
end

-- Waits (bounded: helper processes end on their own) until pred() holds; returns its last value.
local function eventually(pred, timeout)
  local deadline = socket.gettime() + (timeout or 20)
  repeat
    if pred() then return true end
    socket.sleep(0.05)
  until socket.gettime() > deadline
  return pred()
end

describe("transport edges", function()
  local d, dir, song, long_song
  local model

  setup(function()
    d = D.start()
    dir = H.tmpdir("edges")
    song = dir .. "/song.wav"
    local samples = wav.test_signal(2, 44100, 1)
    wav.write(song, 44100, 2, samples)
    long_song = dir .. "/long.wav"
    wav.write_repeated(long_song, 44100, 2, samples, 100)
  end)

  teardown(function()
    os.execute("kill -CONT " .. d.pid .. " 2>/dev/null")
    D.stop(d)
    H.rmtree(dir)
    H.cleanup()
  end)

  local function new_model(sockets)
    model = H.model({ media = H.tmpdir("media"), sockets = sockets })
    D.configure(model, d, { engine = "dsp" })
    return model
  end

  after_each(function()
    os.execute("kill -CONT " .. d.pid .. " 2>/dev/null")
    H.end_scripts(model)
  end)

  local function run_dir() return model.resource .. "/ReaSAM/run" end

  local function first_job() return H.first_job(model) end
  local function status_of(job) return H.job_state(model.media .. "/ReaSAM", job) end

  local function final_state(job)
    local state
    eventually(function()
      state = status_of(job)
      return state == "done" or state == "error" or state == "cancelled"
    end, 30)
    return state
  end

  -- Starts a separation of the long item and returns once the daemon reports it running.
  local function start_long_job()
    model.add_item(model.add_track("Long"), { file = long_song, position = 0 })
    local script = model.run_action(H.action("Separate selection - drums"))
    local job
    assert.is_true(model.run_until(function()
      job = job or first_job()
      return job ~= nil and status_of(job) == "running"
    end, 60), "the job did not start")
    return script, job
  end

  for _, tp in ipairs(TRANSPORTS) do
    describe("over " .. tp.name, function()
      before_each(function() new_model(tp.sockets) end)

      it("says at once that the reasam command is missing, instead of waiting for the start timeout", function()
        model.set_setting("port", D.free_port()) -- nothing answers there
        model.set_setting("ui", "console")
        model.set_setting("start_timeout", 600)
        model.add_item(model.add_track("Mix"), { file = song, position = 0 })
        for _, cmd in ipairs({ dir .. "/no-such-reasam", "reasam-not-on-path" }) do
          model.set_setting("reasam_command", cmd)
          model.messages = {}
          model.run_action(H.action("Separate selection - drums"))
          model.run_until(function() return not model.running() end, 30) -- does not hang until 600 s
          assert.are.same({}, model.errors)
          assert.is_false(model.running(), "still waiting for a daemon that cannot start")
          assert.are.equal(1, #model.messages)
          assert.matches("reasam command was not found", model.messages[1].msg)
          assert.is_truthy(model.messages[1].msg:find(cmd, 1, true))
        end
        assert.are.equal(1, #model.tracks)
        -- what ran left nothing behind in the run folder
        assert.is_true(eventually(function() return #names_in(run_dir()) == 0 end),
          "left: " .. table.concat(names_in(run_dir()), " "))
      end)

      it("removes its helper files when REAPER terminates the script, and only its own", function()
        -- another running script's helper process (its own spawn module), and files it made
        local other = H.lib(model, "spawn")
        local stop = dir .. "/stop-other-" .. (tp.sockets and "udp" or "cli")
        local h = assert(other.command("other", { "/bin/sh", "-c",
          "while [ ! -e '" .. stop .. "' ]; do sleep 0.05; done" }))
        local theirs
        assert.is_true(eventually(function()
          theirs = names_in(run_dir())
          return #theirs == 3 -- .sh, .out, .err (the .rc comes at the end)
        end))
        local script, job = start_long_job()
        model.terminate(script)
        assert.are.same({}, model.errors)
        assert.are.equal("cancelled", final_state(job))
        -- the cancel a terminated script sends still reaches the daemon, then cleans up after itself
        assert.is_true(eventually(function()
          return table.concat(names_in(run_dir()), " ") == table.concat(theirs, " ")
        end), "left: " .. table.concat(names_in(run_dir()), " "))
        -- the other script's helper is untouched: it finishes and reports as usual
        io.open(stop, "w"):close()
        local rc
        assert.is_true(eventually(function()
          rc = h:poll()
          return rc ~= nil
        end))
        assert.are.equal(0, rc)
        assert.are.same({}, names_in(run_dir()))
      end)

      it("closes the window at once (Esc, close button), cancels in the background, leaves no files", function()
        local _, job = start_long_job()
        assert.is_true(model.gfx_open)
        model.gfx_keys[1] = tp.sockets and 27 or -1 -- Esc; the window closed (gfx.getchar() < 0)
        model.tick()
        assert.is_false(model.gfx_open) -- closed on the tick that read it
        local said = model.console_text()
        model.run_until(function() return not model.running() end, 40)
        assert.are.same({}, model.errors)
        assert.matches("1 cancelled", model.console_text())
        assert.are.equal(0, #model.messages)
        assert.are.equal("cancelled", final_state(job))
        assert.is_true(eventually(function() return #names_in(run_dir()) == 0 end),
          "left: " .. table.concat(names_in(run_dir()), " "))
        -- what happened was said on that same tick
        assert.matches("Separate drums: cancelling 1 job %(from the progress window%); the daemon confirms in the "
          .. "background", said)
      end)

      it("says in the console when the daemon never confirms a cancel", function()
        local _, job = start_long_job()
        os.execute("kill -STOP " .. d.pid) -- a daemon that does not answer (stuck in a long step)
        model.gfx_keys[1] = 27
        model.tick()
        assert.is_false(model.gfx_open)
        assert.is_true(model.running()) -- the cancel goes on in the background, without a window
        model.tick()
        model.clock_offset = model.clock_offset + 30 -- longer than the runner waits for a confirmation
        model.run_until(function() return not model.running() end, 20)
        assert.is_false(model.running())
        assert.are.same({}, model.errors)
        assert.are.equal(0, #model.messages)
        assert.is_false(model.gfx_open)
        os.execute("kill -CONT " .. d.pid)
        -- the cancel sent before reaches the daemon once it runs again; its helper cleans up after itself
        assert.are.equal("cancelled", final_state(job))
        assert.is_true(eventually(function() return #names_in(run_dir()) == 0 end),
          "left: " .. table.concat(names_in(run_dir()), " "))
        assert.is_truthy(model.console_text():find("the daemon did not confirm the cancel of " .. job
          .. "; it may still finish", 1, true), model.console_text())
      end)
    end)
  end

  it("says once, in the console, that LuaSocket is missing, and keeps Lua's search paths out of messages",
    function()
      new_model(false)
      model.add_item(model.add_track("Mix"), { file = song, position = 0 })
      for _ = 1, 2 do
        model.run_action(H.action("Separate selection - bass")) -- the dsp engine has no bass: an error box
        model.run_until(function() return not model.running() end, 40)
      end
      assert.are.same({}, model.errors)
      assert.are.equal(2, #model.messages)
      for _, m in ipairs(model.messages) do
        assert.matches("unsupported_prompt", m.msg)
        assert.is_nil(m.msg:find("not found:", 1, true), m.msg)
        assert.is_nil(m.msg:find("no file '", 1, true), m.msg)
        assert.is_nil(m.msg:find("LuaSocket", 1, true), m.msg)
      end
      local text = model.console_text()
      local _, n = text:gsub("LuaSocket not installed: using the slower fallback", "")
      assert.are.equal(1, n, text)
      assert.is_nil(text:find("no file '", 1, true), text)
    end)
end)
