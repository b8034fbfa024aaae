-- Where stems go and what a second separation of the same item does, the time selection as the
-- region, and the original's take and item settings carried over; the real action files against
-- one real `reasam serve` (dsp engine, 2 s of audio) over UDP (and the first case over the
-- reasam command line too).
local H = require("helpers")
local D = require("daemon_fixture")
local C = require("check")
local wav = require("wav")

-- A low rate keeps the spec quick (every frame of every stem is checked); the mappings do not care.
local RATE = 22050

describe("stems as takes, repeats and regions", function()
  local d, dir, song
  local model

  setup(function()
    d = D.start()
    dir = H.tmpdir("takes")
    song = dir .. "/song.wav"
    wav.write(song, RATE, 2, (wav.test_signal(2, RATE, 3)))
  end)

  teardown(function()
    D.stop(d)
    H.rmtree(dir)
    H.cleanup()
  end)

  local function new_model(settings, sockets)
    C.forget()
    model = H.model({ media = H.tmpdir("media"), sockets = sockets ~= false })
    settings = settings or {}
    settings.engine = settings.engine or "dsp"
    D.configure(model, d, settings)
    return model
  end

  after_each(function()
    H.end_scripts(model)
  end)

  local function run(action) return H.run_action(model, action) end

  local function ext(take, key) return take.ext[key] or "" end

  describe("place = takes", function()
    for _, tp in ipairs({ { "UDP", true }, { "the reasam command line", false } }) do
      it("adds target and residual takes to the original item, aligned through offset and playrate, over "
        .. tp[1], function()
        new_model({ place = "takes" }, tp[2])
        local tr = model.add_track("Mix")
        -- trimmed, played at 1.25, and a section of the file: every mapping at once
        local item, orig = model.add_item(tr, { file = song, position = 3, section = { 0.2, 1.6 }, startoffs = 0.3,
          length = 0.8, playrate = 1.25 })
        orig.info.D_PANLAW = 0.5
        orig.info.D_PAN = -0.4
        run("Separate selection - drums")
        assert.are.same({ "Mix" }, C.track_names(model)) -- no new track
        assert.are.equal(3, #item.takes)
        local target, residual = item.takes[2], item.takes[3]
        assert.are.equal("drums", target.name)
        assert.are.equal("drums residual", residual.name)
        assert.are.equal(target, item.active) -- the target plays
        assert.are.equal(0, item.info.B_MUTE) -- the item itself is not muted
        for _, tk in ipairs({ target, residual }) do
          assert.are.equal(1.25, tk.info.D_PLAYRATE)
          assert.are.equal(0.5, tk.info.D_PANLAW)
          assert.are.equal(-0.4, tk.info.D_PAN)
          assert.are.equal(model.guid_of(item), ext(tk, "reasam_item"))
          assert.are.equal(model.guid_of(orig), ext(tk, "reasam_take"))
        end
        local n = C.takes_sum(item, orig, { target, residual })
        assert.is_true(math.abs(n - 0.8 * 1.25 * RATE) <= 1, n)
        assert.are.equal(1, #model.undo)
      end)
    end

    it("lines up takes of an item that starts before its source (a negative start offset)", function()
      new_model({ place = "takes" })
      local item, orig = model.add_item(model.add_track("Mix"), { file = song, position = 2, startoffs = -0.25,
        length = 1.5 })
      run("Separate selection - drums")
      assert.are.equal(3, #item.takes)
      assert.is_true(math.abs(item.takes[2].info.D_STARTOFFS + 0.25) < 1e-9)
      local n = C.takes_sum(item, orig, { item.takes[2], item.takes[3] })
      assert.is_true(math.abs(n - 1.25 * RATE) <= 1, n)
    end)

    it("keeps the original take active and leaves out the residual when the settings say so", function()
      new_model({ place = "target_takes", active_take = "original" })
      local item, orig = model.add_item(model.add_track("Mix"), { file = song, position = 0 })
      run("Separate selection - drums")
      assert.are.equal(2, #item.takes)
      assert.are.equal(orig, item.active)
      assert.are.equal("target", ext(item.takes[2], "reasam_role"))
    end)

    it("falls back to tracks, saying so once, when only part of the items is separated", function()
      new_model({ place = "takes", region = "time_selection" })
      local a = model.add_item(model.add_track("A"), { file = song, position = 0 })
      local b = model.add_item(model.add_track("B"), { file = song, position = 0.5 })
      model.time_sel = { 0.75, 1.5 }
      run("Separate selection - drums")
      assert.are.same({ "A", "drums", "drums residual", "B", "drums", "drums residual" }, C.track_names(model))
      assert.are.equal(1, #a.takes)
      assert.are.equal(1, #b.takes)
      local _, said = model.console_text():gsub("stems went on new tracks instead of takes: only part", "")
      assert.are.equal(1, said)
      C.stems_sum(a, model.tracks[2].items[1], model.tracks[3].items[1])
      C.stems_sum(b, model.tracks[5].items[1], model.tracks[6].items[1])
    end)
  end)

  describe("on_repeat", function()
    it("replace: the new stems take the earlier ones' places, whatever the user renamed or moved", function()
      new_model()
      local tr = model.add_track("Mix")
      local item = model.add_item(tr, { file = song, position = 1 })
      local other = model.add_track("Elsewhere")
      run("Separate selection - drums")
      assert.are.same({ "Mix", "drums", "drums residual", "Elsewhere" }, C.track_names(model))
      local t_tr, r_tr = model.tracks[2], model.tracks[3]
      local first_job = ext(t_tr.items[1].active, "reasam_job")
      -- the user renames the target track, adds an item of their own to it, and moves the residual
      -- stem to another track and a little later
      t_tr.name = "my drums"
      local mine = model.add_item(t_tr, { file = song, position = 8, selected = false })
      local moved = table.remove(r_tr.items, 1)
      moved.track = other
      moved.info.D_POSITION = 1.5
      other.items[1] = moved
      item.info.B_MUTE = 0
      item.selected = true
      run("Separate selection - drums")
      assert.are.same({ "Mix", "my drums", "drums residual", "Elsewhere" }, C.track_names(model))
      assert.are.equal(2, #t_tr.items) -- the user's item stays; the earlier stem was replaced
      assert.are.equal(mine, t_tr.items[1])
      assert.are.equal(0, #r_tr.items)
      assert.are.equal(1, #other.items)
      assert.are_not.equal(moved, other.items[1])
      local new_t, new_r = t_tr.items[2], other.items[1]
      assert.are_not.equal(first_job, ext(new_t.active, "reasam_job"))
      assert.are.equal(ext(new_t.active, "reasam_job"), ext(new_r.active, "reasam_job"))
      assert.are.equal(1, new_r.info.D_POSITION) -- lined up again
      C.stems_sum(item, new_t, new_r)
      assert.are.equal(2, #model.undo) -- one per run: the removal and the new stems together
    end)

    it("replace: a copy the user made of a stem item (its marks copied with it) is theirs and stays", function()
      new_model()
      local item = model.add_item(model.add_track("Mix"), { file = song, position = 1 })
      run("Separate selection - drums")
      local t_tr = model.tracks[2]
      local stem = t_tr.items[1]
      local copy = model.duplicate_item(stem, 6)
      assert.are.equal(ext(stem.active, "reasam_job"), ext(copy.active, "reasam_job"))
      item.selected = true
      run("Separate selection - drums")
      assert.are.same({ "Mix", "drums", "drums residual" }, C.track_names(model))
      assert.are.equal(2, #t_tr.items) -- the earlier stem was replaced, the user's copy stays
      assert.are.equal(copy, t_tr.items[1])
      assert.are.equal(6, copy.info.D_POSITION)
      assert.are_not.equal(stem, t_tr.items[2])
      assert.are.equal(1, #model.tracks[3].items)
      C.stems_sum(item, t_tr.items[2], model.tracks[3].items[1])
    end)

    it("replace in takes: the earlier takes get the new stems; the original take is separated again", function()
      new_model({ place = "takes" })
      local item, orig = model.add_item(model.add_track("Mix"), { file = song, position = 0, startoffs = 0.25,
        length = 1.5 })
      run("Separate selection - drums")
      assert.are.equal(3, #item.takes)
      local target = item.takes[2]
      local first_job, first_file = ext(target, "reasam_job"), target.source.file
      assert.are.equal(target, item.active) -- a stem take is active: separating again uses the original
      run("Separate selection - drums")
      assert.are.equal(3, #item.takes)
      assert.are.equal(target, item.takes[2])
      assert.are_not.equal(first_job, ext(target, "reasam_job"))
      assert.are_not.equal(first_file, target.source.file)
      local f = assert(io.open(model.media .. "/ReaSAM/" .. ext(target, "reasam_job") .. "/manifest.json"))
      assert.matches("song%.wav", f:read("a")) -- the source, not a stem
      f:close()
      C.takes_sum(item, orig, { item.takes[2], item.takes[3] })
      -- targets only now: the target take gets the new stem, the residual take stays (the API
      -- cannot remove a take) and the summary says so
      model.set_setting("place", "target_takes")
      run("Separate selection - drums")
      assert.are.equal(3, #item.takes)
      assert.are_not.equal(ext(item.takes[2], "reasam_job"), ext(item.takes[3], "reasam_job"))
      assert.matches("1 earlier stem take%(s%) left as they were", model.console_text())
    end)

    it("keep: stacks a second pair of tracks", function()
      new_model({ on_repeat = "keep" })
      local item = model.add_item(model.add_track("Mix"), { file = song, position = 0 })
      run("Separate selection - drums")
      run("Separate selection - drums")
      assert.are.same({ "Mix", "drums", "drums residual", "drums", "drums residual" }, C.track_names(model))
      C.stems_sum(item, model.tracks[2].items[1], model.tracks[3].items[1])
    end)
  end)

  describe("the time selection as the region", function()
    it("separates only the part of each item inside it, aligned, and skips the rest with one note", function()
      new_model({ region = "time_selection" })
      local a = model.add_item(model.add_track("A"), { file = song, position = 10, startoffs = 0.2, length = 1.5,
        playrate = 0.8 })
      model.add_item(model.add_track("B"), { file = song, position = 0 })
      model.add_item(model.add_track("C"), { file = song, position = 20 })
      model.time_sel = { 10.5, 11.25 }
      run("Separate selection - drums")
      assert.are.same({ "A", "drums", "drums residual", "B", "C" }, C.track_names(model))
      local ti = model.tracks[2].items[1]
      assert.are.equal(10.5, ti.info.D_POSITION)
      assert.is_true(math.abs(ti.info.D_LENGTH - 0.75) < 1e-9)
      local n = C.stems_sum(a, ti, model.tracks[3].items[1])
      assert.is_true(math.abs(n - 0.75 * 0.8 * RATE) <= 1, n)
      assert.matches("2 selected items are outside the time selection: skipped", model.console_text())
    end)

    it("the time-selection action separates the vocals of that part (spleeter engine)", function()
      assert.is_true(D.has_engine(d, "spleeter"), "the daemon has no usable spleeter engine: run bash install/test.sh")
      -- (the test signal has no voice: the near-silent vocals stem is imported all the same)
      new_model({ engine = "spleeter", import_absent = "y" })
      local a = model.add_item(model.add_track("A"), { file = song, position = 4, startoffs = 0.1, length = 1.8 })
      model.time_sel = { 4.5, 5.25 }
      run("Separate time selection - vocals")
      assert.are.same({ "A", "vocals", "vocals residual" }, C.track_names(model))
      local ti = model.tracks[2].items[1]
      assert.are.equal(4.5, ti.info.D_POSITION)
      assert.is_true(math.abs(ti.info.D_LENGTH - 0.75) < 1e-9)
      local n = C.stems_sum(a, ti, model.tracks[3].items[1])
      assert.is_true(math.abs(n - 0.75 * RATE) <= 1, n)
    end)

    it("the time-selection action asks for a time selection, and says when no item is in it", function()
      new_model()
      model.add_item(model.add_track("A"), { file = song, position = 0 })
      run("Separate time selection - vocals")
      assert.are.equal(1, #model.messages)
      assert.matches("Make a time selection first", model.messages[1].msg)
      model.time_sel = { 5, 6 }
      run("Separate time selection - vocals")
      assert.are.equal(2, #model.messages)
      assert.matches("Nothing to separate:\n\n1 selected item is outside the time selection", model.messages[2].msg)
      assert.are.equal(1, #model.tracks)
      assert.are.equal(0, #model.undo)
    end)
  end)

  describe("the original's settings", function()
    -- Two items on two tracks, each take with a pan law, a pan, take FX; each item with a snap
    -- offset and auto-crossfades; separated once, looked at by the three specs below.
    local separated
    local function two_items_separated()
      if separated then
        model = separated.model
        return separated.items
      end
      new_model()
      local items = {}
      for i, name in ipairs({ "A", "B" }) do
        local item, take = model.add_item(model.add_track(name), { file = song, position = i })
        take.info.D_PANLAW = 0.5
        take.info.D_PAN = 0.6
        item.info.D_SNAPOFFSET = 0.125
        item.info.D_FADEINLEN_AUTO = 0.01
        item.info.D_FADEOUTLEN_AUTO = 0.02
        take.fx = 1
        items[i] = item
      end
      run("Separate selection - drums")
      separated = { model = model, items = items }
      return items
    end

    it("carries the take's pan law and the item's snap offset and auto-crossfades to the stems", function()
      local items = two_items_separated()
      assert.are.same({ "A", "drums", "drums residual", "B", "drums", "drums residual" }, C.track_names(model))
      for _, i in ipairs({ 2, 3, 5, 6 }) do
        local it = model.tracks[i].items[1]
        assert.are.equal(0.5, it.active.info.D_PANLAW)
        assert.are.equal(0.6, it.active.info.D_PAN)
        assert.are.equal(0.125, it.info.D_SNAPOFFSET)
        assert.are.equal(0.01, it.info.D_FADEINLEN_AUTO)
        assert.are.equal(0.02, it.info.D_FADEOUTLEN_AUTO)
      end
      C.stems_sum(items[1], model.tracks[2].items[1], model.tracks[3].items[1])
      C.stems_sum(items[2], model.tracks[5].items[1], model.tracks[6].items[1])
    end)

    it("makes one undo point for one action over two items", function()
      two_items_separated()
      assert.are.equal(6, #model.tracks)
      assert.are.equal(1, #model.undo)
      assert.are.equal("ReaSAM: separate drums", model.undo[1].desc)
      assert.are.equal(0, model.loose_edits)
    end)

    it("warns once per action that the stems are separated before the take FX", function()
      two_items_separated()
      local _, warned = model.console_text():gsub("has take FX: the stems are separated from its source before", "")
      assert.are.equal(1, warned)
    end)

    local VOL = { { 0, 1 }, { 0.5, 0.25 }, { 1.5, 1 } }
    local PAN = { { 0.25, -1 }, { 1, 1 } }

    it("copies the take's volume and pan envelopes to the stems, moved with a later start", function()
      new_model()
      local item, take = model.add_item(model.add_track("A"), { file = song, position = 1, playrate = 1 })
      model.add_take_envelope(take, "Volume", VOL)
      model.add_take_envelope(take, "Pan", PAN)
      run("Separate selection - drums")
      for _, i in ipairs({ 2, 3 }) do
        local t = model.tracks[i].items[1].active
        assert.are.same(VOL, model.envelope_points(t.envs.Volume))
        assert.are.same(PAN, model.envelope_points(t.envs.Pan))
        assert.is_nil(t.envs.Volume.chunk:match("EGUID")) -- a GUID of its own, given by REAPER
        assert.is_nil(t.envs.Mute)
        -- the chunk write made the take and its source anew: peaks went to the new source
        assert.is_true(t.source.peaks_built)
      end
      C.stems_sum(item, model.tracks[2].items[1], model.tracks[3].items[1])
      -- only the time selection: the stem items start 0.5 s later, so do their envelopes' points
      model.set_setting("region", "time_selection")
      model.set_setting("on_repeat", "keep")
      model.time_sel = { 1.5, 2.5 }
      run("Separate selection - drums")
      local t = model.tracks[2].items[1].active
      assert.are.equal(1.5, model.tracks[2].items[1].info.D_POSITION)
      assert.are.same({ { -0.5, 1 }, { 0, 0.25 }, { 1, 1 } }, model.envelope_points(t.envs.Volume))
    end)

    it("gives stem takes the original take's envelopes, once, also on a repeat", function()
      new_model({ place = "takes" })
      local item, take = model.add_item(model.add_track("A"), { file = song, position = 0 })
      model.add_take_envelope(take, "Volume", VOL)
      run("Separate selection - drums")
      run("Separate selection - drums")
      assert.are.equal(3, #item.takes)
      for _, t in ipairs({ item.takes[2], item.takes[3] }) do
        assert.are.same(VOL, model.envelope_points(t.envs.Volume))
        local _, ok = model.reaper.GetItemStateChunk(item, "", false)
        assert.are.equal(3, select(2, ok:gsub("<VOLENV", ""))) -- the original's and one per stem take
        assert.is_true(t.source.peaks_built) -- on the source the final take holds
      end
      C.takes_sum(item, take, { item.takes[2], item.takes[3] })
    end)
  end)
end)
