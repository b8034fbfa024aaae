-- The real action files against a real `reasam serve` on loopback, over both transports:
--   UDP: OSC datagrams through LuaSocket;
--   the reasam command line (no sockets): `reasam send --no-wait` / `ping` / `cancel` through
--   ExecProcess(…, -1), then the job's status.json / manifest.json polled from the defer loop.
-- The key cases run over both (one parametrized block); the rest over UDP only.
local H = require("helpers")
local D = require("daemon_fixture")
local C = require("check")
local wav = require("wav")
local socket = require("socket")

-- A tick never blocks REAPER (H.assert_healthy: counted, not timed) and imports one job's stems
-- at most (a stem set has at most four).
local MAX_TICK_ITEMS = 4

local TRANSPORTS = {
  { name = "UDP", sockets = true },
  { name = "the reasam command line (no sockets)", sockets = false },
}

describe("actions", function()
  local d, dir, song, long_song, slow_send
  local model

  setup(function()
    d = D.start()
    dir = H.tmpdir("actions")
    song = dir .. "/song.wav"
    local samples = wav.test_signal(4, 44100, 1)
    wav.write(song, 44100, 2, samples)
    -- 160 s for the cancel tests (several chunks in the daemon): the 4 s signal again and again
    long_song = dir .. "/long.wav"
    wav.write_repeated(long_song, 44100, 2, samples, 40)
    -- A `reasam` whose `send` takes 1.5 s to reach the daemon (a slow start: cold disk, a virus
    -- scanner): a cancel sent right away arrives before the job exists.
    slow_send = dir .. "/slow-send-reasam"
    local f = assert(io.open(slow_send, "w"))
    f:write("#!/bin/sh\n", 'if [ "$1" = send ]; then sleep 1.5; fi\n', "exec '", d.bin, "' \"$@\"\n")
    f:close()
    os.execute("chmod +x '" .. slow_send .. "'")
  end)

  teardown(function()
    D.stop(d)
    H.rmtree(dir)
    H.cleanup()
  end)

  local function new_model(sockets, opts)
    C.forget()
    opts = opts or {}
    model = H.model({ media = H.tmpdir("media"), sockets = sockets, imgui = opts.imgui })
    D.configure(model, d, { engine = "dsp" })
    return model
  end

  after_each(function()
    H.end_scripts(model)
  end)

  local function run(action, timeout) return H.run_action(model, action, timeout) end

  local function healthy() H.assert_healthy(model, MAX_TICK_ITEMS) end

  local function first_job() return H.first_job(model) end

  -- The job's state in the daemon's record, once it is final (or whatever it is at the timeout).
  local function daemon_final_state(job, timeout)
    local deadline = socket.gettime() + (timeout or 20)
    local state
    repeat
      state = H.job_state(model.media .. "/ReaSAM", job)
      if state == "done" or state == "error" or state == "cancelled" then return state end
      socket.sleep(0.1)
    until socket.gettime() > deadline
    return state
  end

  for _, tp in ipairs(TRANSPORTS) do
    describe("over " .. tp.name, function()
      before_each(function() new_model(tp.sockets) end)

      it("separates drums: new tracks under the source, aligned stems that sum to the original", function()
        local mix = model.add_track("Mix")
        local other = model.add_track("Other")
        local item = model.add_item(mix, { file = song, position = 2.0 })
        run("Separate selection - drums")
        healthy()
        assert.are.same({ "Mix", "drums", "drums residual", "Other" }, C.track_names(model))
        local t_tr, r_tr = model.tracks[2], model.tracks[3]
        assert.are.equal(1, #t_tr.items)
        assert.are.equal(1, #r_tr.items)
        local ti, ri = t_tr.items[1], r_tr.items[1]
        assert.are.equal(2.0, ti.info.D_POSITION)
        assert.is_true(math.abs(ti.info.D_LENGTH - 4.0) < 1e-9)
        assert.are.equal(0, ti.active.info.D_STARTOFFS)
        assert.are.equal(1, item.info.B_MUTE) -- the original is muted (default)
        assert.are.equal(0, ti.info.B_MUTE)
        local checked = C.stems_sum(item, ti, ri)
        assert.are.equal(4 * 44100, checked)
        -- metadata, undo, peaks, progress
        assert.matches("^reaper%-", ti.active.ext.reasam_job)
        assert.are.equal("drums", ti.active.ext.reasam_prompt)
        assert.are.equal("target", ti.active.ext.reasam_role)
        assert.are.equal("residual", ri.active.ext.reasam_role)
        assert.are.equal(ti.active.ext.reasam_job, ri.active.ext.reasam_job)
        assert.are.equal(1, #model.undo)
        assert.are.equal("ReaSAM: separate drums", model.undo[1].desc)
        assert.are.equal(0, model.loose_edits)
        assert.is_true(ti.active.source.peaks_built)
        assert.is_true(ri.active.source.peaks_built)
        assert.is_true(model.gfx_frames > 0)
        assert.is_false(model.gfx_open)
        assert.are.equal(0, #model.messages)
        -- stems live in <project media>/ReaSAM/<job id>/
        assert.is_truthy(ti.active.source.file:find(model.media .. "/ReaSAM/" .. ti.active.ext.reasam_job, 1, true))
        assert.are.equal(0, #other.items)
        if tp.sockets then
          assert.are.equal(0, #model.exec) -- the daemon runs: nothing to start
        else
          assert.matches("LuaSocket not installed: using the slower fallback", model.console_text())
          assert.is_true(#model.exec >= 2) -- ping, send
          -- the helper scripts clean up after themselves
          assert.is_nil(model.reaper.EnumerateFiles(model.resource .. "/ReaSAM/run", 0))
        end
      end)

      it("lines up a trimmed item with a start offset and playrate 1.5, and a second item at 0.8, at once", function()
        local a_tr = model.add_track("A")
        local b_tr = model.add_track("B")
        local a = model.add_item(a_tr, { file = song, position = 1.0, startoffs = 0.7, length = 1.2, playrate = 1.5 })
        local b = model.add_item(b_tr, { file = song, position = 0.5, startoffs = 0.25, length = 2.0, playrate = 0.8 })
        run("Separate selection - drums")
        healthy()
        assert.are.same({ "A", "drums", "drums residual", "B", "drums", "drums residual" }, C.track_names(model))
        for _, case in ipairs({ { a, 2 }, { b, 5 } }) do
          local orig, i = case[1], case[2]
          local ti, ri = model.tracks[i].items[1], model.tracks[i + 1].items[1]
          assert.is_true(math.abs(ti.info.D_POSITION - orig.info.D_POSITION) < 1e-9)
          assert.is_true(math.abs(ti.info.D_LENGTH - orig.info.D_LENGTH) < 1e-9)
          assert.is_true(math.abs(ti.active.info.D_STARTOFFS) < 1e-9) -- the stem covers exactly the region
          assert.are.equal(orig.active.info.D_PLAYRATE, ti.active.info.D_PLAYRATE)
          local n = C.stems_sum(orig, ti, ri)
          local want = math.floor(orig.info.D_LENGTH * orig.active.info.D_PLAYRATE * 44100 + 0.5)
          assert.is_true(math.abs(n - want) <= 1, ("checked %d frames, expected %d"):format(n, want))
        end
        assert.are.equal(1, #model.undo) -- one undo point for the action, both items in it
        assert.are_not.equal(model.tracks[2].items[1].active.ext.reasam_job,
          model.tracks[5].items[1].active.ext.reasam_job)
      end)

      it("skips a MIDI item with a note and separates the audio item", function()
        local keys = model.add_track("Keys")
        model.add_item(keys, { midi = true, position = 0, length = 2 })
        local tr = model.add_track("Audio")
        local item = model.add_item(tr, { file = song, position = 0 })
        run("Separate selection - drums")
        healthy()
        assert.are.same({ "Keys", "Audio", "drums", "drums residual" }, C.track_names(model))
        C.stems_sum(item, model.tracks[3].items[1], model.tracks[4].items[1])
        assert.matches("is MIDI: skipped", model.console_text())
        assert.are.equal(0, #model.messages)
      end)

      it("isolates the sound in the time selection (a + span) and names it", function()
        local tr = model.add_track("Scene")
        local item = model.add_item(tr, { file = song, position = 10, startoffs = 0.5, length = 3, playrate = 1.0 })
        model.time_sel = { 11, 11.5 }
        model.inputs[1] = { true, "" }
        run("Separate selection - sound in time selection")
        healthy()
        assert.are.same({ "Scene", "time selection sound", "time selection sound residual" }, C.track_names(model))
        local ti = model.tracks[2].items[1]
        assert.are.equal("+1.5:2", ti.active.ext.reasam_spans)
        assert.are.equal("", ti.active.ext.reasam_prompt)
        C.stems_sum(item, ti, model.tracks[3].items[1])
      end)

      it("shows the daemon's error in a message box and imports nothing", function()
        local tr = model.add_track("Mix")
        local item = model.add_item(tr, { file = song, position = 0 })
        run("Separate selection - bass") -- the dsp engine has no bass model
        healthy()
        assert.are.equal(1, #model.messages)
        assert.matches("unsupported_prompt", model.messages[1].msg)
        assert.matches("bass", model.messages[1].msg)
        assert.are.equal(1, #model.tracks)
        assert.are.equal(0, item.info.B_MUTE)
        assert.are.equal(0, #model.undo)
      end)

      it("passes a prompt that starts with '-' to the daemon as a prompt", function()
        model.add_item(model.add_track("Mix"), { file = song, position = 0 })
        model.inputs[1] = { true, "-ish" }
        run("Separate selection - custom prompt")
        healthy()
        -- the daemon got it, and says what it thinks of it (not an option parser's complaint)
        assert.are.equal(1, #model.messages)
        assert.matches("unsupported_prompt", model.messages[1].msg)
        assert.matches("%-ish", model.messages[1].msg)
        assert.are.equal(1, #model.tracks)
      end)

      it("cancels for real on Esc: the daemon stops the job and nothing is imported", function()
        local tr = model.add_track("Long")
        local item = model.add_item(tr, { file = long_song, position = 0 })
        model.time_sel = { 1, 2 }
        model.inputs[1] = { true, "" }
        model.run_action(H.action("Separate selection - sound in time selection"))
        local job
        assert.is_true(model.run_until(function()
          job = job or first_job()
          for _, t in pairs(model.gfx_text) do
            if job and (t == "separating" or t == "preparing" or tostring(t):find("%%")) then return true end
          end
          return false
        end, 60))
        model.gfx_keys[1] = 27
        model.run_until(function() return not model.running() end, 30)
        healthy()
        assert.is_false(model.running(), "the script still runs after Esc")
        assert.are.equal(1, #model.tracks)
        assert.are.equal(0, item.info.B_MUTE)
        assert.are.equal(0, #model.undo)
        assert.are.equal("cancelled", daemon_final_state(job))
        assert.are.equal("", model.reaper.GetExtState("ReaSAM", "active_jobs"))
      end)

      it("cancels for real on Esc pressed on the first tick after sending, while the request is on its way",
        function()
          model.set_setting("reasam_command", slow_send) -- only used without sockets
          local tr = model.add_track("Long")
          model.add_item(tr, { file = long_song, position = 0 })
          model.run_action(H.action("Separate selection - drums"))
          local job
          assert.is_true(model.run_until(function()
            job = first_job()
            return job ~= nil
          end, 30))
          model.gfx_keys[1] = 27 -- read by the next tick
          model.run_until(function() return not model.running() end, 40)
          healthy()
          assert.is_false(model.running())
          assert.are.equal(1, #model.tracks)
          assert.are.equal(0, #model.undo)
          assert.matches("1 cancelled", model.console_text())
          assert.are.equal("cancelled", daemon_final_state(job))
        end)

      it("cancels another script's jobs from the cancel action", function()
        local tr = model.add_track("Long")
        model.add_item(tr, { file = long_song, position = 0 })
        model.time_sel = { 1, 2 }
        model.inputs[1] = { true, "x" }
        model.run_action(H.action("Separate selection - sound in time selection"))
        local job
        assert.is_true(model.run_until(function()
          job = first_job()
          return job ~= nil
        end, 30))
        model.run_action(H.action("ReaSAM - cancel jobs"))
        model.run_until(function() return not model.running() end, 40)
        healthy()
        assert.are.equal(1, #model.tracks)
        assert.matches("cancelling 1 job", model.console_text())
        assert.matches("1 cancelled", model.console_text())
        assert.are.equal("cancelled", daemon_final_state(job)) -- the daemon's record
      end)

      it("cancels the daemon job when REAPER terminates the script", function()
        local tr = model.add_track("Long")
        model.add_item(tr, { file = long_song, position = 0 })
        model.time_sel = { 1, 2 }
        model.inputs[1] = { true, "" }
        local script = model.run_action(H.action("Separate selection - sound in time selection"))
        local job
        assert.is_true(model.run_until(function()
          job = job or first_job()
          local f = job and io.open(model.media .. "/ReaSAM/" .. job .. "/status.json")
          if f then f:close() end
          return f ~= nil -- the daemon has the job
        end, 30))
        model.terminate(script)
        assert.are.same({}, model.errors)
        assert.are.equal("cancelled", daemon_final_state(job))
        assert.are.equal(1, #model.tracks)
      end)
    end)
  end

  describe("over UDP", function()
    before_each(function() new_model(true) end)

    it("lines up a section source and an item that starts before its source", function()
      local tr = model.add_track("Edits")
      -- a take whose source is a section (1.0 s into the file, 2.5 s long), trimmed by 0.25 s
      local sec = model.add_item(tr, { file = song, position = 0, section = { 1.0, 2.5 }, startoffs = 0.25,
        length = 1.5 })
      -- an item stretched to the left of its source: the first 0.5 s play silence
      local early = model.add_item(model.add_track("Early"), { file = song, position = 6, startoffs = -0.5,
        length = 2, playrate = 1.0 })
      run("Separate selection - drums")
      healthy()
      assert.are.same({ "Edits", "drums", "drums residual", "Early", "drums", "drums residual" },
        C.track_names(model))
      local st = model.tracks[2].items[1]
      assert.are.equal(0, st.info.D_POSITION)
      assert.is_true(math.abs(st.info.D_LENGTH - 1.5) < 1e-9)
      assert.are.equal(math.floor(1.5 * 44100 + 0.5), C.stems_sum(sec, st, model.tracks[3].items[1]))
      local et = model.tracks[5].items[1]
      assert.is_true(math.abs(et.info.D_POSITION - 6.5) < 1e-9) -- where the source starts playing
      assert.is_true(math.abs(et.info.D_LENGTH - 1.5) < 1e-9)
      C.stems_sum(early, et, model.tracks[6].items[1])
    end)

    it("separates only the time selection when that setting is on", function()
      model.set_setting("region", "time_selection")
      local tr = model.add_track("Mix")
      local item = model.add_item(tr, { file = song, position = 10, startoffs = 0.5, length = 3, playrate = 1.0 })
      model.time_sel = { 11, 12.25 }
      run("Separate selection - drums")
      healthy()
      local ti = model.tracks[2].items[1]
      assert.are.equal(11, ti.info.D_POSITION)
      assert.is_true(math.abs(ti.info.D_LENGTH - 1.25) < 1e-9)
      assert.are.equal(math.floor(1.25 * 44100 + 0.5), C.stems_sum(item, ti, model.tracks[3].items[1]))
    end)

    it("puts two items of one track on the same pair of new tracks", function()
      local tr = model.add_track("Loop")
      local x = model.add_item(tr, { file = song, position = 0, startoffs = 0, length = 1.5 })
      local y = model.add_item(tr, { file = song, position = 3, startoffs = 2, length = 1.5 })
      run("Separate selection - drums")
      healthy()
      assert.are.same({ "Loop", "drums", "drums residual" }, C.track_names(model))
      local targets, residuals = C.items(model.tracks[2]), C.items(model.tracks[3])
      assert.are.equal(2, #targets)
      C.stems_sum(x, targets[1], residuals[1])
      C.stems_sum(y, targets[2], residuals[2])
    end)

    it("shows nothing-to-do when only MIDI or refused items are selected", function()
      local tr = model.add_track("Keys")
      model.add_item(tr, { midi = true, position = 0, length = 2 })
      model.add_item(tr, { file = song, position = 3, reversed = true })
      run("Separate selection - drums")
      healthy()
      assert.are.equal(1, #model.messages)
      assert.matches("MIDI", model.messages[1].msg)
      assert.matches("reversed", model.messages[1].msg)
      assert.are.equal(1, #model.tracks)
    end)

    it("separates vocals with the spleeter engine", function()
      assert.is_true(D.has_engine(d, "spleeter"),
        "the daemon has no usable spleeter engine (engines: " .. tostring(d.pong and d.pong[2])
        .. "): run bash install/test.sh")
      model.set_setting("engine", "spleeter")
      local tr = model.add_track("Song")
      local item = model.add_item(tr, { file = song, position = 1, startoffs = 0.5, length = 2.5 })
      run("Separate selection - vocals", 180)
      healthy()
      assert.are.same({ "Song", "vocals", "vocals residual" }, C.track_names(model))
      local ti = model.tracks[2].items[1]
      C.stems_sum(item, ti, model.tracks[3].items[1])
      local json = H.lib(model, "json")
      local f = assert(io.open(model.media .. "/ReaSAM/" .. ti.active.ext.reasam_job .. "/manifest.json"))
      local manifest = assert(json.decode(f:read("a")))
      f:close()
      assert.are.equal("spleeter", manifest.engine)
    end)

    it("leaves the project as it was when an import fails half-way", function()
      model.set_setting("folder", "y")
      model.add_track("Band", 1)
      local gtr = model.add_track("Guitar", -1)
      model.add_track("After")
      local item = model.add_item(gtr, { file = song, position = 0, length = 2 })
      -- REAPER cannot open the second stem (removed, or locked, after the manifest was written)
      local create, calls = model.reaper.PCM_Source_CreateFromFile, 0
      model.reaper.PCM_Source_CreateFromFile = function(path)
        calls = calls + 1
        if calls == 2 then return nil end
        return create(path)
      end
      run("Separate selection - drums")
      healthy()
      assert.are.equal(2, calls)
      assert.are.same({ "Band", "Guitar", "After" }, C.track_names(model))
      local depths = {}
      for i, t in ipairs(model.tracks) do depths[i] = t.info.I_FOLDERDEPTH end
      assert.are.same({ 1, -1, 0 }, depths)
      assert.are.same({ item }, gtr.items)
      assert.are.equal(0, item.info.B_MUTE)
      assert.are.equal(1, #model.messages)
      assert.matches("import failed: REAPER could not open", model.messages[1].msg)
    end)

    it("remembers custom prompts and offers them again", function()
      local tr = model.add_track("Mix")
      local item = model.add_item(tr, { file = song, position = 0 })
      model.inputs[1] = { true, "  drums " }
      run("Separate selection - custom prompt")
      healthy()
      assert.are.same({ "Mix", "drums", "drums residual" }, C.track_names(model))
      C.stems_sum(item, model.tracks[2].items[1], model.tracks[3].items[1])
      -- second run: a menu of recent prompts; pick "drums" (entry 2, after "New prompt...")
      model.reaper.SetExtState("ReaSAM", "recent_prompts", "a dog barking;drums", true)
      model.menu_choices[1] = 3
      model.add_item(model.add_track("More"), { file = song, position = 0 })
      item.selected = false
      run("Separate selection - custom prompt")
      healthy()
      assert.are.equal("New prompt...|a dog barking|drums", model.menus[1])
      assert.are.equal(1, #model.dialogs) -- no typing needed the second time
      assert.are.equal("drums;a dog barking", model.reaper.GetExtState("ReaSAM", "recent_prompts"))
      assert.are.same({ "Mix", "drums", "drums residual", "More", "drums", "drums residual" }, C.track_names(model))
    end)

    it("makes a folder when asked, keeping a closing source track's folder intact", function()
      model.set_setting("folder", "y")
      model.set_setting("mute_original", "n")
      model.add_track("Band", 1)
      local gtr = model.add_track("Guitar", -1) -- last track of the Band folder
      model.add_track("After")
      local item = model.add_item(gtr, { file = song, position = 0, length = 2 })
      run("Separate selection - drums")
      healthy()
      assert.are.same({ "Band", "Guitar", "drums (ReaSAM)", "drums", "drums residual", "After" },
        C.track_names(model))
      local depths = {}
      for i, t in ipairs(model.tracks) do depths[i] = t.info.I_FOLDERDEPTH end
      assert.are.same({ 1, 0, 1, 0, -2, 0 }, depths)
      assert.are.equal(0, item.info.B_MUTE)
      C.stems_sum(item, model.tracks[4].items[1], model.tracks[5].items[1])
    end)

    it("shows the daemon's status and saves edited settings", function()
      model.msgbox_answers[1] = 6 -- "Change settings?" Yes
      model.inputs[1] = function(_, n, captions, defaults)
        assert.matches("separator=\n", captions)
        local values = {}
        for v in (defaults .. "\n"):gmatch("(.-)\n") do values[#values + 1] = v end
        assert.are.equal(n, #values)
        values[3] = "spleeter" -- engine
        values[5] = "y" -- folder
        values[8] = "{prompt} (stem)" -- target track name
        return true, table.concat(values, "\n")
      end
      run("ReaSAM - status and settings")
      healthy()
      assert.are.equal(1, #model.messages)
      local text = model.messages[1].msg
      assert.matches("Daemon: running, version", text)
      assert.matches("Engines: .*dsp", text)
      assert.matches("Daemon jobs: 0 running", text)
      assert.matches("127.0.0.1:" .. d.port .. " %(OSC over UDP%)", text)
      assert.are.equal(4, model.messages[1].kind)
      local get = model.reaper.GetExtState
      assert.are.equal("spleeter", get("ReaSAM", "engine"))
      assert.are.equal("y", get("ReaSAM", "folder"))
      assert.are.equal("{prompt} (stem)", get("ReaSAM", "target_name"))
      assert.are.equal(tostring(d.port), get("ReaSAM", "port"))
    end)

    it("refuses invalid settings with a message and keeps the old values", function()
      model.msgbox_answers[1] = 6
      model.inputs[1] = function(_, _, _, defaults)
        local values = {}
        for v in (defaults .. "\n"):gmatch("(.-)\n") do values[#values + 1] = v end
        values[1] = "99999"
        values[4] = "ultra"
        return true, table.concat(values, "\n")
      end
      run("ReaSAM - status and settings")
      assert.are.equal(2, #model.messages)
      assert.matches("Daemon port: must be between 1 and 65535", model.messages[2].msg)
      assert.matches("Quality", model.messages[2].msg)
      assert.are.equal(tostring(d.port), model.reaper.GetExtState("ReaSAM", "port"))
      assert.are.equal("", model.reaper.GetExtState("ReaSAM", "quality"))
    end)

    it("cancel with nothing running says so", function()
      run("ReaSAM - cancel jobs")
      healthy()
      assert.matches("no jobs to cancel", model.console_text())
    end)

    it("shows progress in a ReaImGui window when ReaImGui is there", function()
      new_model(true, { imgui = true })
      model.set_setting("ui", "auto")
      local tr = model.add_track("Mix")
      model.add_item(tr, { file = song, position = 0, length = 1 })
      run("Separate selection - drums")
      healthy()
      assert.is_true(model.imgui_frames > 0)
      assert.are.equal(0, model.gfx_frames)
      assert.are.equal(3, #model.tracks)
    end)
  end)
end)
