-- The import of a finished job, without a daemon: a manifest and its stem files made here. A
-- failure half-way must leave the project as it was (no half-made tracks or stray items).
local H = require("helpers")
local C = require("check")
local wav = require("wav")

describe("importer", function()
  local dir, source, target, residual, model, importer, selection
  local set_found, set_absent, set_rest -- a set's stems: found, not found (near silence), the rest
  local RATE = 8000

  setup(function()
    dir = H.tmpdir("imp")
    local frames = RATE * 4
    local s, t, r = {}, {}, {}
    for i = 1, frames * 2 do
      s[i] = math.sin(i / 7) * 0.5
      t[i] = s[i] * 0.25
      r[i] = s[i] - t[i]
    end
    source, target, residual = dir .. "/source.wav", dir .. "/target.wav", dir .. "/residual.wav"
    wav.write(source, RATE, 2, s)
    wav.write(target, RATE, 2, t)
    wav.write(residual, RATE, 2, r)
    local f, a, rest = {}, {}, {}
    for i = 1, frames * 2 do
      f[i] = s[i] * 0.25
      a[i] = s[i] * 0.001
      rest[i] = s[i] - f[i] - a[i]
    end
    set_found, set_absent, set_rest = dir .. "/set_found.wav", dir .. "/set_absent.wav", dir .. "/set_rest.wav"
    wav.write(set_found, RATE, 2, f, 32) -- float, as the daemon writes stems
    wav.write(set_absent, RATE, 2, a, 32)
    wav.write(set_rest, RATE, 2, rest, 32)
  end)
  teardown(function()
    H.rmtree(dir)
    H.cleanup()
  end)

  before_each(function()
    model = H.model()
    importer = H.lib(model, "importer")
    selection = H.lib(model, "selection")
  end)

  local function job_for(item, id)
    local req = assert(selection.map_item(item))
    return { id = id or "job-1", request = req, prompt_text = "drums", prompt_name = "drums" }
  end

  -- Stems covering the whole file (what the daemon returns for the region it was asked).
  local function manifest(region)
    region = region or { 0, 4 }
    local function stem(role, path)
      return { role = role, name = role, path = path, channels = 2, frames = RATE * 4,
        region_start = region[1], region_end = region[2] }
    end
    return { sample_rate = RATE, stems = { stem("target", target), stem("residual", residual) } }
  end

  -- What the project looks like: track names, folder depths, items and their mute state.
  local function snapshot()
    local out = {}
    for _, tr in ipairs(model.tracks) do
      local items = {}
      for _, it in ipairs(tr.items) do items[#items + 1] = { it, it.info.B_MUTE } end
      out[#out + 1] = { tr.name, tr.info.I_FOLDERDEPTH, items }
    end
    return out
  end

  -- REAPER cannot open the residual stem (it was removed, or is locked, after the manifest was
  -- written): PCM_Source_CreateFromFile returns nil for it.
  local function fail_on_residual()
    local create = model.reaper.PCM_Source_CreateFromFile
    model.reaper.PCM_Source_CreateFromFile = function(path)
      if path == residual then return nil end
      return create(path)
    end
  end

  local function balanced()
    assert.are.equal(0, model.undo_depth)
    assert.are.equal(0, model.refresh)
  end

  it("imports target and residual under the source track", function()
    local tr = model.add_track("Guitar")
    local item = model.add_item(tr, { file = source, position = 1 })
    local res = assert(importer.import(job_for(item), manifest(), { mute = true, batch = "b" }))
    balanced()
    assert.are.equal(2, #res.items)
    assert.are.equal(3, #model.tracks)
    assert.are.equal(1, item.info.B_MUTE)
  end)

  it("deletes the tracks it made and restores the source's folder when a stem cannot be opened", function()
    model.add_track("Band", 1)
    local gtr = model.add_track("Guitar", -1) -- closes the Band folder: the import moves that
    model.add_track("After")
    local item = model.add_item(gtr, { file = source, position = 0 })
    local before = snapshot()
    fail_on_residual()
    local res, err = importer.import(job_for(item), manifest(), { folder = true, mute = true, batch = "b" })
    assert.is_nil(res)
    assert.matches("REAPER could not open .*residual%.wav", err)
    balanced()
    assert.are.same(before, snapshot())
    assert.are.equal(1, #model.undo) -- one undo point, holding no change
  end)

  it("deletes only its own items from a pair of tracks an earlier item of the batch made", function()
    local tr = model.add_track("Loop")
    local x = model.add_item(tr, { file = source, position = 0, length = 1.5 })
    local y = model.add_item(tr, { file = source, position = 3, startoffs = 2, length = 1.5 })
    assert(importer.import(job_for(x, "job-x"), manifest(), { mute = true, batch = "b" }))
    local before = snapshot()
    assert.are.equal(3, #before)
    fail_on_residual()
    local res = importer.import(job_for(y, "job-y"), manifest(), { mute = true, batch = "b" })
    assert.is_nil(res)
    balanced()
    assert.are.same(before, snapshot()) -- the first job's tracks and items stay, y is not muted
    assert.are.equal(0, y.info.B_MUTE)
  end)

  it("leaves nothing behind when the stems do not overlap the item", function()
    local tr = model.add_track("Mix")
    local item = model.add_item(tr, { file = source, position = 0, length = 1 })
    local before = snapshot()
    local res, err = importer.import(job_for(item), manifest({ 2, 4 }), { mute = true })
    assert.is_nil(res)
    assert.matches("does not overlap", err)
    balanced()
    assert.are.same(before, snapshot())
  end)

  it("checks the stem files before touching the project", function()
    local item = model.add_item(model.add_track("Mix"), { file = source, position = 0 })
    local m = manifest()
    m.stems[2].path = dir .. "/gone.wav"
    local res, err = importer.import(job_for(item), m, {})
    assert.is_nil(res)
    assert.matches("stem file missing", err)
    assert.are.equal(0, #model.undo)
    assert.are.equal(1, #model.tracks)
  end)

  -- A stem set's manifest: "harmonic" found, "drums" not found, and the rest (region minus both).
  local function set_manifest()
    local function stem(role, name, path, present)
      return { role = role, name = name, path = path, channels = 2, frames = RATE * 4, region_start = 0,
        region_end = 4, present = present }
    end
    return { sample_rate = RATE, stems = { stem("target", "drums", set_absent, false),
      stem("target", "harmonic", set_found, true), stem("residual", "residual", set_rest) } }
  end

  local function set_job(item, id)
    local job = job_for(item, id)
    job.prompt_name = "drums, harmonic, rest"
    return job
  end

  it("puts a stem set's not-found target on a muted track, so the tracks still sum to the original", function()
    local tr = model.add_track("Keys")
    local item = model.add_item(tr, { file = source, position = 1 })
    local res = assert(importer.import_set(set_job(item), set_manifest(), { mute = true, batch = "b" }))
    balanced()
    assert.are.same({ "drums" }, res.skipped)
    assert.are.same({ "Keys", "drums, harmonic, rest (ReaSAM)", "harmonic", "rest", "drums (not found)" },
      C.track_names(model))
    assert.are.same({ 0, 0, 1 }, { model.tracks[3].info.B_MUTE, model.tracks[4].info.B_MUTE,
      model.tracks[5].info.B_MUTE })
    assert.are.equal(-1, model.tracks[5].info.I_FOLDERDEPTH) -- inside the folder
    local items = { model.tracks[3].items[1], model.tracks[4].items[1], model.tracks[5].items[1] }
    assert.is_true(C.set_sum(item, items) > 0)
    assert.is_false(pcall(C.set_sum, item, { items[1], items[2] })) -- without it the sum is off
  end)

  it("puts a stem set's stems as takes of the item, the not-found one too, summing to the original", function()
    local tr = model.add_track("Keys")
    local item, orig = model.add_item(tr, { file = source, position = 1, startoffs = 0.5, length = 2 })
    local res = assert(importer.import_set(set_job(item), set_manifest(), { place = "takes", batch = "b" }))
    balanced()
    assert.are.equal(1, #model.tracks)
    local names = {}
    for i, tk in ipairs(item.takes) do names[i] = tk.name end
    assert.are.same({ "", "harmonic", "rest", "drums (not found)" }, names)
    assert.are.equal(item.takes[2], item.active)
    assert.are.equal(3, res.take_count)
    assert.are.equal("harmonic", item.takes[2].ext.reasam_prompt) -- a set's target: its own prompt
    assert.are.equal("rest", item.takes[3].ext.reasam_stem)
    assert.is_true(C.takes_sum(item, orig, { item.takes[2], item.takes[3], item.takes[4] }) > 0)
    assert.are.equal(0, item.info.B_MUTE)
  end)

  it("adds no take when a stem cannot be opened (a take cannot be taken back)", function()
    local item = model.add_item(model.add_track("Mix"), { file = source, position = 0 })
    fail_on_residual()
    local res, err = importer.import(job_for(item), manifest(), { place = "takes", mute = true })
    assert.is_nil(res)
    assert.matches("REAPER could not open", err)
    balanced()
    assert.are.equal(1, #item.takes)
    assert.are.equal(0, item.info.B_MUTE)
  end)

  it("keeps the earlier stems when the import that would replace them fails", function()
    local item = model.add_item(model.add_track("Mix"), { file = source, position = 0 })
    assert(importer.import(job_for(item, "job-1"), manifest(), { batch = "b1" }))
    local before = snapshot()
    fail_on_residual()
    assert.is_nil(importer.import(job_for(item, "job-2"), manifest(), { batch = "b2" }))
    balanced()
    assert.are.same(before, snapshot())
    assert.are.equal("job-1", model.tracks[2].items[1].active.ext.reasam_job)
  end)

  it("replaces a set's earlier stems on their own tracks; never the user's items, other prompts or parts",
    function()
      local tr = model.add_track("Keys")
      local item = model.add_item(tr, { file = source, position = 1 })
      assert(importer.import(job_for(item, "job-p"), manifest(), { batch = "b0" })) -- another prompt
      assert(importer.import_set(set_job(item, "job-1"), set_manifest(), { batch = "b1" }))
      assert.are.same({ "Keys", "drums, harmonic, rest (ReaSAM)", "harmonic", "rest", "drums (not found)", "drums",
        "drums residual" }, C.track_names(model))
      local harmonic, rest, absent = model.tracks[3], model.tracks[4], model.tracks[5]
      -- the user renames a stem track (still ours) and gives the rest's item a take of their own
      -- (theirs now)
      harmonic.name = "keys harmonic"
      local rest_item = rest.items[1]
      model.add_take(rest_item, { file = source, name = "my take" })
      local res = assert(importer.import_set(set_job(item, "job-2"), set_manifest(), { batch = "b2" }))
      balanced()
      -- not every stem has an earlier one to replace (the rest is the user's now): a new folder;
      -- the earlier stems that were all ReaSAM's are gone, the user's item stays
      assert.are.equal(2, res.replaced)
      assert.are.same({ "Keys", "drums, harmonic, rest (ReaSAM)", "harmonic", "rest", "drums (not found)",
        "drums, harmonic, rest (ReaSAM)", "keys harmonic", "rest", "drums (not found)", "drums", "drums residual" },
        C.track_names(model))
      assert.are.same({}, harmonic.items)
      assert.are.same({}, absent.items)
      assert.are.same({ rest_item }, rest.items)
      assert.are.equal(2, #rest_item.takes)
      assert.are.equal(1, #model.tracks[10].items) -- the other prompt's stems stay
      assert.are.equal(1, #model.tracks[11].items)
      -- once every stem has an earlier one, the new stems take their places
      local new_rest = model.tracks[4].items[1]
      res = assert(importer.import_set(set_job(item, "job-3"), set_manifest(), { batch = "b3" }))
      assert.are.equal(3, res.replaced)
      assert.are.equal(11, #model.tracks)
      for _, i in ipairs({ 3, 4, 5 }) do
        assert.are.equal(1, #model.tracks[i].items)
        assert.are.equal("job-3", model.tracks[i].items[1].active.ext.reasam_job)
      end
      assert.are_not.equal(new_rest, model.tracks[4].items[1])
      assert.is_true(C.set_sum(item, { model.tracks[3].items[1], model.tracks[4].items[1],
        model.tracks[5].items[1] }) > 0)
      -- a part of the item (a time selection) is not a repeat of the whole; the same part again is
      local function part(id)
        local job = set_job(item, id)
        job.request = assert(selection.map_item(item, { limit = { 3.5, 4.5 } }))
        local m = set_manifest()
        for _, st in ipairs(m.stems) do st.region_start, st.region_end = 2.5, 3.5 end
        return assert(importer.import_set(job, m, { batch = id }))
      end
      assert.are.equal(0, part("job-4").replaced)
      assert.are.equal(15, #model.tracks) -- a new folder right under the source track
      assert.are.equal("job-4", model.tracks[3].items[1].active.ext.reasam_job)
      assert.are.equal("job-3", model.tracks[7].items[1].active.ext.reasam_job)
      assert.are.equal(3, part("job-5").replaced)
      assert.are.equal(15, #model.tracks)
      assert.are.equal("job-5", model.tracks[3].items[1].active.ext.reasam_job)
      assert.are.equal("job-3", model.tracks[7].items[1].active.ext.reasam_job)
    end)

  -- A run's import phase without a daemon: jobs marked done with manifests written here.
  local function write_manifest(path, m)
    local f = assert(io.open(path, "w"))
    f:write(H.json_encode(m))
    f:close()
  end

  local function finished_run(opts, manifests)
    local runner = H.lib(model, "runner")
    local requests = {}
    for i = 1, #manifests do
      local item = model.add_item(model.add_track("T" .. i), { file = source, position = i })
      requests[i] = assert(selection.map_item(item))
    end
    opts.requests = requests
    local run = runner.new(opts)
    for i, job in ipairs(run.jobs) do
      job.state = "done"
      job.manifest_path = dir .. "/m-" .. job.id .. ".json"
      write_manifest(job.manifest_path, manifests[i])
    end
    return run
  end

  -- Calls import_one as the defer loop does, tick by tick, until no job waits; returns the most
  -- items one call added.
  local function import_ticks(run)
    local most, calls = 0, 0
    repeat
      local n0 = model.items_added
      run:import_one()
      balanced()
      most = math.max(most, model.items_added - n0)
      calls = calls + 1
      local waiting = false
      for _, job in ipairs(run.jobs) do waiting = waiting or job.state == "done" end
    until not waiting or calls > 50
    return most, calls
  end

  for _, case in ipairs({
    { "a stem set", { title = "set", prompt_text = "drums", prompt_name = "drums, harmonic, rest",
      prompts = { "drums", "harmonic" } }, set_manifest, 3 },
    { "a one-prompt run", { title = "one", prompt_text = "drums", prompt_name = "drums" },
      manifest, 2 },
  }) do
    it(case[1] .. " imports one job per tick, fails a malformed manifest alone, and makes one undo point",
      function()
        local bad = case[3]()
        bad.stems[1] = 5 -- a malformed entry: indexing it raises a Lua error
        local run = finished_run(case[2], { case[3](), bad, case[3](), case[3]() })
        local most, calls = import_ticks(run)
        assert.are.equal(case[4], most) -- one job's stems per tick, never two jobs
        assert.are.equal(4, calls)
        local states = {}
        for i, job in ipairs(run.jobs) do states[i] = job.state end
        assert.are.same({ "imported", "error", "imported", "imported" }, states)
        assert.matches("^import failed: ", run.jobs[2].message)
        assert.are.equal(1, #model.undo)
        assert.are.equal("ReaSAM: separate " .. case[2].prompt_name, model.undo[1].desc)
        assert.is_true(model.undo[1].edits > 0)
        assert.are.equal(0, model.loose_edits)
        run:import_one() -- nothing left: no second undo point
        assert.are.equal(1, #model.undo)
      end)
  end
end)
