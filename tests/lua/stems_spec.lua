-- Stem sets from REAPER against a real `reasam serve` (dsp engine) over UDP: the checklist (dialog
-- and ReaImGui), the folder of coloured tracks, one undo point, stems that sum to the original,
-- "nothing like ... found", the ready "vocals, drums, bass, rest" action, and a cancel that
-- closes the window at once.
local H = require("helpers")
local D = require("daemon_fixture")
local C = require("check")
local wav = require("wav")
local socket = require("socket")

describe("stem sets", function()
  local d, dir, song, chord, long_song
  local model

  setup(function()
    d = D.start()
    dir = H.tmpdir("stems")
    song = dir .. "/song.wav"
    local samples = wav.test_signal(4, 44100, 1)
    wav.write(song, 44100, 2, samples)
    long_song = dir .. "/long.wav"
    wav.write_repeated(long_song, 44100, 2, samples, 40)
    -- a chord and nothing else: no drums in it (faded in and out, as a pad is: an abrupt digital
    -- start or stop is a click, and a click is percussive)
    chord = dir .. "/chord.wav"
    local pad = {}
    local frames, fade = 3 * 44100, 0.2 * 44100
    for n = 0, frames - 1 do
      local t = n / 44100
      local g = math.min(1, n / fade, (frames - 1 - n) / fade)
      local v = g * (0.12 * math.sin(2 * math.pi * 220 * t) + 0.08 * math.sin(2 * math.pi * 330 * t))
      pad[2 * n + 1], pad[2 * n + 2] = v, 0.9 * v
    end
    wav.write(chord, 44100, 2, pad)
  end)

  teardown(function()
    D.stop(d)
    H.rmtree(dir)
    H.cleanup()
  end)

  local function new_model(opts)
    C.forget()
    opts = opts or {}
    model = H.model({ media = H.tmpdir("media"), sockets = true, imgui = opts.imgui })
    D.configure(model, d, { engine = "dsp" })
    return model
  end

  after_each(function()
    H.end_scripts(model)
  end)

  local function run(action, timeout) return H.run_action(model, action, timeout) end

  local function native(r, g, b) return model.reaper.ColorToNative(r, g, b) | 0x1000000 end

  -- Answers the checklist dialog: ticks `ticked`, types `also`; checks what it showed.
  local function answer_checklist(ticked, also, seen)
    model.inputs[#model.inputs + 1] = function(title, n, captions, defaults)
      assert.are.equal("ReaSAM: which stems?", title)
      local values = {}
      for v in (defaults .. "\n"):gmatch("(.-)\n") do values[#values + 1] = v end
      assert.are.equal(n, #values)
      if seen then seen.captions, seen.values = captions, table.move(values, 1, #values, 1, {}) end
      local names = {}
      for c in (captions:match("^(.-),extrawidth") .. ","):gmatch("(.-),") do names[#names + 1] = c end
      for i = 1, n - 1 do
        local name = names[i]:match("^(.-) %(y/n%)$")
        values[i] = ticked[name] and "y" or "n"
      end
      values[n] = also
      return true, table.concat(values, "\n")
    end
  end

  it("puts drums, harmonic and the rest in a coloured folder under each source, in one undo point", function()
    new_model()
    local a_tr = model.add_track("Band")
    local b_tr = model.add_track("Loop")
    local a = model.add_item(a_tr, { file = song, position = 1.0 })
    local b = model.add_item(b_tr, { file = song, position = 0.5, startoffs = 0.25, length = 2.0, playrate = 0.8 })
    answer_checklist({ drums = true }, "harmonic")
    run("Separate selection - stems...")
    assert.are.same({}, model.messages)
    assert.are.same({
      "Band", "drums, harmonic, rest (ReaSAM)", "drums", "harmonic", "rest",
      "Loop", "drums, harmonic, rest (ReaSAM)", "drums", "harmonic", "rest",
    }, C.track_names(model))
    local depths = {}
    for i, t in ipairs(model.tracks) do depths[i] = t.info.I_FOLDERDEPTH end
    assert.are.same({ 0, 1, 0, 0, -1, 0, 1, 0, 0, -1 }, depths)
    for _, case in ipairs({ { a, 3 }, { b, 8 } }) do
      local orig, i = case[1], case[2]
      local items = { model.tracks[i].items[1], model.tracks[i + 1].items[1], model.tracks[i + 2].items[1] }
      assert.is_true(C.set_sum(orig, items) > 0) -- aligned, and the three sum to the original
      assert.are.equal("drums", items[1].active.ext.reasam_prompt)
      assert.are.equal("harmonic", items[2].active.ext.reasam_prompt)
      assert.are.equal("residual", items[3].active.ext.reasam_role)
      assert.are.equal(native(249, 145, 87), model.tracks[i].info.I_CUSTOMCOLOR) -- drums' colour
      assert.are.equal(native(120, 160, 110), model.tracks[i + 1].info.I_CUSTOMCOLOR) -- 2nd "other"
      assert.are.equal(native(140, 140, 140), model.tracks[i + 2].info.I_CUSTOMCOLOR) -- rest
      assert.are.equal(1, orig.info.B_MUTE)
    end
    assert.are.equal(1, #model.undo) -- two items, one undo point
    assert.are.equal("ReaSAM: separate drums, harmonic, rest", model.undo[1].desc)
    assert.are.equal(0, model.loose_edits)
    assert.are.equal(3, model.max_tick_items) -- one job (three stems) per tick, not both at once

    -- The choice is remembered: the next checklist starts from it.
    local seen = {}
    answer_checklist({}, "", seen)
    run("Separate selection - stems...")
    assert.matches("^drums %(y/n%)", seen.captions:match("vocals %(y/n%),(.*)"))
    assert.are.same({ "n", "y", "n", "n", "n", "n", "n", "harmonic" }, seen.values)
    assert.are.equal(1, #model.messages) -- nothing ticked: says so, sends nothing
    assert.matches("Tick at least one stem", model.messages[1].msg)
  end)

  it("takes the checklist from a ReaImGui window when ReaImGui is there, with custom colours", function()
    new_model({ imgui = true })
    model.set_setting("stem_colors", "harmonic=#102030; rest = #abcdef")
    local tr = model.add_track("Mix")
    local item = model.add_item(tr, { file = song, position = 0 })
    model.imgui_checks = { vocals = false, bass = false, drums = true }
    model.imgui_inputs = { ["also (comma-separated)"] = "harmonic" }
    model.imgui_keys = { "button" } -- "Separate"
    run("Separate selection - stems...")
    assert.are.same({}, model.messages)
    assert.are.same({ "Mix", "drums, harmonic, rest (ReaSAM)", "drums", "harmonic", "rest" }, C.track_names(model))
    assert.are.equal(native(16, 32, 48), model.tracks[4].info.I_CUSTOMCOLOR)
    assert.are.equal(native(171, 205, 239), model.tracks[5].info.I_CUSTOMCOLOR)
    C.set_sum(item, { model.tracks[3].items[1], model.tracks[4].items[1], model.tracks[5].items[1] })
    assert.are.equal("drums;harmonic", model.reaper.GetExtState("ReaSAM", "last_stems"))
  end)

  it("makes one undo point for a single ticked stem over two items", function()
    new_model()
    local a = model.add_item(model.add_track("A"), { file = song, position = 0 })
    local b = model.add_item(model.add_track("B"), { file = song, position = 1 })
    answer_checklist({ drums = true }, "")
    run("Separate selection - stems...")
    assert.are.same({}, model.messages)
    assert.are.same({ "A", "drums", "drums residual", "B", "drums", "drums residual" }, C.track_names(model))
    C.stems_sum(a, model.tracks[2].items[1], model.tracks[3].items[1])
    C.stems_sum(b, model.tracks[5].items[1], model.tracks[6].items[1])
    assert.are.equal(1, #model.undo)
    assert.are.equal("ReaSAM: separate drums", model.undo[1].desc)
    assert.are.equal(0, model.loose_edits)
    assert.are.equal(2, model.max_tick_items)
  end)

  it("says 'nothing like ... found' instead of importing a near-silent stem, unless asked to", function()
    new_model()
    local tr = model.add_track("Keys")
    local item = model.add_item(tr, { file = chord, position = 0, name = "chord" })
    run("Separate selection - drums")
    assert.matches("nothing like 'drums' found in", model.console_text())
    assert.are.equal(1, #model.tracks)
    assert.are.equal(0, #model.undo)
    assert.are.equal(0, item.info.B_MUTE)
    assert.are.same({}, model.messages)
    -- A set imports what was found (the harmonic part and the rest) and names what was not.
    answer_checklist({ drums = true }, "harmonic")
    run("Separate selection - stems...")
    -- The drums stem goes on a muted track after the rest: the tracks still sum to the original.
    assert.are.same({ "Keys", "drums, harmonic, rest (ReaSAM)", "harmonic", "rest", "drums (not found)" },
      C.track_names(model))
    assert.are.equal(1, model.tracks[5].info.B_MUTE)
    assert.is_true(C.set_sum(item, { model.tracks[3].items[1], model.tracks[4].items[1],
      model.tracks[5].items[1] }) > 0)
    assert.are.equal(2, select(2, model.console_text():gsub("ReaSAM: nothing like 'drums' found", "")))
    assert.matches("put on the muted track 'drums %(not found%)'", model.console_text())
    -- The setting imports such stems anyway.
    model.set_setting("import_absent", "y")
    run("Separate selection - drums")
    assert.are.equal("drums", model.tracks[2].name)
    assert.are.equal("drums residual", model.tracks[3].name)
  end)

  it("the ready vocals, drums, bass, rest action names what needs SAM-Audio on the dsp engine", function()
    new_model()
    model.add_item(model.add_track("Mix"), { file = song, position = 0 })
    run("Separate selection - vocals, drums, bass, rest")
    assert.are.equal(1, #model.messages)
    assert.matches("'vocals', 'bass' need SAM%-Audio", model.messages[1].msg)
    assert.matches("unsupported_prompt", model.messages[1].msg)
    assert.are.equal(1, #model.tracks)
    assert.are.equal(0, #model.undo)
  end)

  it("closes its window at once on Esc and says the job was cancelled", function()
    new_model()
    local item = model.add_item(model.add_track("Long"), { file = long_song, position = 0 })
    answer_checklist({ drums = true }, "harmonic")
    model.run_action(H.action("Separate selection - stems..."))
    assert.is_true(model.run_until(function()
      return model.reaper.GetExtState("ReaSAM", "active_jobs") ~= "" and model.gfx_open
    end, 60))
    local t0 = socket.gettime()
    model.gfx_keys[1] = 27
    assert.is_true(model.run_until(function() return not model.gfx_open end, 10))
    assert.is_true(socket.gettime() - t0 < 5) -- does not wait for the daemon (generous bound)
    assert.matches("cancelling 1 job %(from the progress window%)", model.console_text())
    model.run_until(function() return not model.running() end, 40)
    assert.are.same({}, model.errors)
    assert.matches("1 cancelled", model.console_text())
    assert.are.equal(1, #model.tracks)
    assert.are.equal(0, #model.undo)
    assert.are.equal(0, item.info.B_MUTE)
  end)
end)
