-- "ReaSAM - job panel" against a real `reasam serve` on loopback, over both transports (OSC over
-- UDP with the ReaImGui view; the reasam command line without sockets with the gfx view): the
-- daemon's jobs with their states, progress and time left, cancel, import again, show in folder,
-- open log, a setting, closing, and (last) stopping and starting the daemon from the panel.
-- The OS opener is a `xdg-open` on the PATH of the model's ExecProcess that records its argument.
local H = require("helpers")
local D = require("daemon_fixture")
local C = require("check")
local wav = require("wav")
local socket = require("socket")


local CASES = {
  { name = "UDP, ReaImGui view", sockets = true, imgui = true },
  { name = "the reasam command line (no sockets), gfx view", sockets = false, imgui = false },
}

describe("job panel", function()
  local d, dir, deep, song, long_song, tiny, bin, opened
  local model, script

  setup(function()
    d = D.start()
    dir = H.tmpdir("panel")
    -- the audio in a 120-character folder: a row shows its file name and its project whatever
    -- the temporary folder's length
    deep = dir .. "/" .. string.rep("f", 120)
    os.execute("mkdir -p '" .. deep .. "'")
    song = deep .. "/the-whole-band-live-at-the-hall-take-3.wav"
    local samples = wav.test_signal(4, 44100, 1)
    wav.write(song, 44100, 2, samples)
    long_song = dir .. "/long.wav"
    wav.write_repeated(long_song, 44100, 2, samples, 40)
    tiny = dir .. "/tiny.wav"
    wav.write(tiny, 44100, 2, (wav.test_signal(1, 44100, 2)))
    bin = dir .. "/bin"
    opened = dir .. "/opened.txt"
    os.execute("mkdir -p '" .. bin .. "'")
    local f = assert(io.open(bin .. "/xdg-open", "w"))
    f:write("#!/bin/sh\nprintf '%s\\n' \"$1\" >> '" .. opened .. "'\n")
    f:close()
    os.execute("chmod +x '" .. bin .. "/xdg-open'")
  end)

  teardown(function()
    if model then
      H.end_scripts(model)
      -- a daemon the panel started
      D.kill(D.read_token(model.resource .. "/ReaSAM/daemon.pid"))
    end
    D.stop(d)
    H.rmtree(dir)
    H.cleanup()
  end)

  local function new_model(case)
    C.forget()
    model = H.model({ media = H.tmpdir("media"), sockets = case.sockets, imgui = case.imgui,
      exec_env = D.env_for(dir) .. " PATH='" .. bin .. "':\"$PATH\"" })
    D.configure(model, d, { engine = "dsp", ui = "auto" })
    return model
  end

  local function healthy() H.assert_healthy(model) end

  -- Sends one OSC request to the daemon as another client would (a job from elsewhere).
  local function send(address, args)
    local u = socket.udp()
    u:setsockname("127.0.0.1", 0)
    args[#args + 1] = "token"
    args[#args + 1] = d.token
    u:sendto(D.osc.encode(address, args), "127.0.0.1", d.port)
    u:close()
  end

  local function daemon_state(job) return H.job_state(d.dir .. "/out", job) end

  local function wait_state(job, want, timeout)
    local deadline = socket.gettime() + (timeout or 30)
    while socket.gettime() < deadline do
      if daemon_state(job) == want then return true end
      socket.sleep(0.05)
    end
    return false
  end

  local function the_panel() return script.env.package.loaded.panel.current end

  local function row(id)
    local p = the_panel()
    for _, r in ipairs(p and p.rows or {}) do
      if r.id == id then return r end
    end
    return nil
  end

  local function until_row(id, pred, timeout)
    return model.run_until(function()
      local r = row(id)
      return r ~= nil and pred(r)
    end, timeout or 30)
  end

  -- Presses a button: by its label (and row) in the ReaImGui view, by a left click on the box the
  -- gfx view drew for it.
  -- (gfx: scrolling the list down, a notch per tick, until the row's button shows.)
  local function click(label, id)
    local p = the_panel()
    if model.imgui then
      model.imgui_clicks[id and (label .. "##" .. id) or label] = true
      return
    end
    for _ = 1, 60 do
      for _, h in ipairs(p.view.hits) do
        if h.label == label and (id == nil or h.cmd[2] == id) then
          model.gfx_clicks[#model.gfx_clicks + 1] = { h.x + h.w / 2, h.y + h.h / 2 }
          return
        end
      end
      model.gfx.mouse_wheel = -120
      model.tick()
    end
    error("no button " .. label .. " for " .. tostring(id))
  end

  local function shown()
    return table.concat(model.imgui and (model.imgui_text or {}) or model.gfx_text, "\n")
  end

  -- Whether the view shows `pattern` (gfx: scrolling down a notch per tick until it does, then
  -- back up as far).
  local function shows(pattern)
    if model.imgui then return shown():find(pattern) ~= nil end
    local found, notches = false, 0
    for _ = 1, 60 do
      model.tick()
      found = shown():find(pattern) ~= nil
      if found then break end
      model.gfx.mouse_wheel = -120
      notches = notches + 1
    end
    model.gfx.mouse_wheel = 120 * notches
    model.tick()
    return found
  end

  local function read_opened()
    local f = io.open(opened)
    local text = f and f:read("a") or ""
    if f then f:close() end
    return text
  end

  for n, case in ipairs(CASES) do
    describe("over " .. case.name, function()
      it("lists jobs with states, progress and time left; cancels, imports again, opens folders and the log", function()
        new_model(case)
        local tag = "c" .. n
        -- A job of this project, through the action (recorded for "import again").
        local mix = model.add_track("Mix")
        local item = model.add_item(mix, { file = song, position = 1.5 })
        script = model.run_action(H.action("Separate selection - drums"))
        model.run_until(function() return not model.running() end, 90)
        assert.are.same({ "Mix", "drums", "drums residual" }, C.track_names(model))
        local mine = model.tracks[2].items[1].active.ext.reasam_job
        -- Jobs from elsewhere: a few short ones, three long ones, one whose file vanishes, one cancelled.
        for i = 1, 6 do send("/reasam/separate", { tag .. "-tiny-" .. i, tiny, "drums", "engine", "dsp" }) end
        for i = 1, 3 do
          send("/reasam/separate", { tag .. "-long-" .. i, long_song, "drums", "engine", "dsp",
            "region", "0:" .. (150 + i) })
        end
        local doomed = deep .. "/doomed-" .. tag .. ".wav"
        wav.write(doomed, 44100, 2, (wav.test_signal(1, 44100, 3)))
        send("/reasam/separate", { tag .. "-gone", doomed, "drums", "engine", "dsp" })
        send("/reasam/separate", { tag .. "-cancelled", tiny, "drums", "engine", "dsp", "region", "0:0.5" })
        assert.is_true(wait_state(tag .. "-cancelled", "queued"))
        send("/reasam/cancel", { tag .. "-cancelled" })
        assert.is_true(wait_state(tag .. "-cancelled", "cancelled"))
        os.remove(doomed)

        script = model.run_action(H.action("ReaSAM - job panel"))
        local p = the_panel()
        assert.is_truthy(p)
        assert.are.equal(case.sockets and "udp" or "cli", p.t.kind)
        -- running with progress and time left; queued; cancelled; done (this project's)
        assert.is_true(until_row(tag .. "-long-1", function(r) return r.state == "running" and r.eta ~= nil end, 60),
          "no running row with a time left")
        assert.are.equal("queued", row(tag .. "-long-3").state)
        assert.are.equal("cancelled", row(tag .. "-cancelled").state)
        assert.is_true(row(mine).mine and row(mine).state == "done")
        assert.is_false(row(tag .. "-tiny-1").mine)
        assert.are.equal("done", row(tag .. "-tiny-1").state, row(tag .. "-tiny-1").message)
        assert.matches("running %d+%% · %d+:%d%d left", shown())
        -- this project's job: the marker and the file's name (gfx: first, on the job's line)
        local name = "the%-whole%-band%-live%-at%-the%-hall%-take%-3%.wav"
        local label = model.imgui and ("drums: " .. name .. "\n[^\n]*\nthis project")
          or ("\nthis project · drums: " .. name .. "\n")
        assert.is_true(shows(label), shown())
        assert.matches("Daemon: running", shown())
        -- the engines the daemon can use, and the one the actions ask for
        assert.matches("Daemon: running [^\n]* · engines [^\n]*dsp[^\n]* · using dsp · device ", shown())
        -- bounded work: the reply's entries were merged a few per tick
        assert.is_true(#p.rows > 8)
        assert.are.equal(8, p.most_rows_in_a_tick)

        -- Cancel from the panel reaches the daemon (running and queued jobs).
        click("Cancel", tag .. "-long-1")
        assert.is_true(model.run_until(function() return daemon_state(tag .. "-long-1") == "cancelled" end, 30))
        for _, id in ipairs({ tag .. "-long-2", tag .. "-long-3" }) do
          assert.is_true(until_row(id, function(r) return r.state == "running" or r.state == "queued" end))
          click("Cancel", id)
          assert.is_true(model.run_until(function() return daemon_state(id) == "cancelled" end, 30), id)
        end
        -- The job whose file vanished fails, with the daemon's message.
        assert.is_true(until_row(tag .. "-gone", function(r) return r.state == "error" end, 60))
        assert.are.equal("not_found", row(tag .. "-gone").code)
        local want = model.imgui and { "failed: [^\n]*doomed%-c%d%.wav: no such file %(not_found%)" }
          or { "failed %(not_found%)", "\n[^\n]*doomed%-c%d%.wav: no such file" } -- (gfx: on a line of its own)
        model.run_until(function() return shown():find(want[#want]) ~= nil end, 10)
        for _, w in ipairs(want) do assert.matches(w, shown()) end

        -- Import again, after the stem tracks were deleted: they come back, aligned, summing to
        -- the original (a repeat replaces what is still there: see the stem set case for "keep").
        model.reaper.DeleteTrack(model.tracks[3])
        model.reaper.DeleteTrack(model.tracks[2])
        click("Import again", mine)
        assert.is_true(model.run_until(function() return #model.tracks == 3 end, 10))
        assert.are.same({ "Mix", "drums", "drums residual" }, C.track_names(model))
        local ti, ri = model.tracks[2].items[1], model.tracks[3].items[1]
        assert.are.equal(1.5, ti.info.D_POSITION)
        assert.are.equal(4 * 44100, C.stems_sum(item, ti, ri))
        assert.are.equal(mine, ti.active.ext.reasam_job)
        assert.are.equal(2, #model.undo)

        -- Show in folder, open log: the OS opener gets the job's folder and the daemon's log file.
        click("Folder", mine)
        click("Open log")
        assert.is_true(model.run_until(function() return select(2, read_opened():gsub("\n", "")) >= 2 end, 10))
        local lines = {}
        for line in read_opened():gmatch("[^\n]+") do lines[#lines + 1] = line end
        table.sort(lines)
        local want_paths = { d.dir .. "/state/logs/reasam.log", model.media .. "/ReaSAM/" .. mine }
        table.sort(want_paths)
        assert.are.same(want_paths, lines)
        local opener = {}
        for _, e in ipairs(model.exec) do
          if e.cmd:match("^xdg%-open ") then opener[#opener + 1] = e.cmd end
        end
        table.sort(opener)
        local want_cmds = {}
        for i, path in ipairs(want_paths) do want_cmds[i] = 'xdg-open "' .. path .. '"' end
        assert.are.same(want_cmds, opener)
        os.remove(opened)

        -- A setting changed in the panel persists.
        if model.imgui then
          model.imgui_headers = { Settings = true }
          model.imgui_inputs["Quality (fast/balanced/best)##quality"] = "best"
          model.imgui_checks["Put new tracks in a folder (y/n)##folder"] = true
        else
          local values = {}
          model.inputs[1] = function(_, count, _, defaults)
            for v in (defaults .. "\n"):gmatch("(.-)\n") do values[#values + 1] = v end
            assert.are.equal(count, #values)
            values[4], values[5] = "best", "y" -- quality, folder
            return true, table.concat(values, "\n")
          end
          click("Settings...")
        end
        assert.is_true(model.run_until(function()
          return model.reaper.GetExtState("ReaSAM", "quality") == "best"
            and model.reaper.GetExtState("ReaSAM", "folder") == "y"
        end, 10))
        assert.is_true(model.ext_persist["ReaSAM\0quality"])

        -- Dock: ReaImGui's first REAPER docker (dock id -1), remembered; gfx's dock state.
        click("Dock")
        if model.imgui then
          assert.is_true(model.run_until(function()
            return model.reaper.GetExtState("ReaSAM", "panel_dock") == "-1" end, 10))
          assert.are.equal(-1, model.imgui_dock)
        else
          assert.is_true(model.run_until(function() return model.gfx_dock == 1 end, 10), model.console_text())
        end

        -- Closing the panel ends its defer loop and lets go of the window and the socket.
        local sock = p.t.sock
        if model.imgui then model.imgui_close = true else model.gfx_keys[1] = -1 end
        assert.is_true(model.run_until(function() return not model.running() end, 10))
        assert.is_false(script.alive)
        assert.is_true(p.closed)
        assert.is_nil(p.t)
        assert.is_nil(script.env.package.loaded.panel.current)
        if sock then assert.is_nil(sock:getsockname()) end -- closed
        -- (the reasam helpers still running at the close remove their own files when they end)
        local run_dir = model.resource .. "/ReaSAM/run"
        local deadline = socket.gettime() + 20
        while model.reaper.EnumerateFiles(run_dir, 0) and socket.gettime() < deadline do socket.sleep(0.1) end
        assert.is_nil(model.reaper.EnumerateFiles(run_dir, 0), "helper files left in " .. run_dir)
        if not model.imgui then
          assert.is_false(model.gfx_open)
          assert.are.equal("1", model.reaper.GetExtState("ReaSAM", "panel_gfx_dock")) -- opens docked next time
        end
        healthy()
      end)
    end)
  end

  it("imports a stem set again (setting: keep earlier stems) into a folder of its own, lined up", function()
    new_model(CASES[1])
    model.set_setting("on_repeat", "keep")
    local tr = model.add_track("Mix")
    local item = model.add_item(tr, { file = song, position = 0.5, startoffs = 0.25, length = 3 })
    model.imgui_checks = { vocals = false, bass = false, drums = true }
    model.imgui_inputs = { ["also (comma-separated)"] = "harmonic" }
    model.imgui_keys = { "button" } -- "Separate"
    script = model.run_action(H.action("Separate selection - stems..."))
    model.run_until(function() return not model.running() end, 90)
    assert.are.equal(5, #model.tracks)
    local job = model.tracks[3].items[1].active.ext.reasam_job
    -- As if the daemon had not found the drums: import again follows the import_absent setting
    -- (off: a muted "(not found)" track after the rest), as a run does.
    local mpath = model.media .. "/ReaSAM/" .. job .. "/manifest.json"
    local f = assert(io.open(mpath))
    local manifest = H.lib(model, "json").decode(f:read("a"))
    f:close()
    for _, st in ipairs(manifest.stems) do
      if st.name == "drums" then st.present = false end
    end
    f = assert(io.open(mpath, "w"))
    f:write(H.json_encode(manifest))
    f:close()
    script = model.run_action(H.action("ReaSAM - job panel"))
    assert.is_true(until_row(job, function(r) return r.state == "done" and r.mine end))
    click("Import again", job)
    assert.is_true(model.run_until(function() return #model.tracks == 9 end, 10))
    assert.are.same({ "Mix", "drums, harmonic, rest (ReaSAM)", "harmonic", "rest", "drums (not found)",
      "drums, harmonic, rest (ReaSAM)", "drums", "harmonic", "rest" }, C.track_names(model))
    assert.are.same({ 0, 0, 1 }, { model.tracks[3].info.B_MUTE, model.tracks[4].info.B_MUTE,
      model.tracks[5].info.B_MUTE })
    local items = { model.tracks[3].items[1], model.tracks[4].items[1], model.tracks[5].items[1] }
    assert.are.equal(job, items[1].active.ext.reasam_job)
    assert.are.equal(3 * 44100, C.set_sum(item, items))
    model.imgui_close = true
    assert.is_true(model.run_until(function() return not model.running() end, 10))
    healthy()
  end)

  it("imports stems placed as takes again as takes, replacing the earlier ones, lined up", function()
    new_model(CASES[1])
    model.set_setting("place", "takes")
    local tr = model.add_track("Mix")
    local item, orig = model.add_item(tr, { file = song, position = 0.5, startoffs = 0.25, length = 3 })
    orig.info.D_PANLAW = 0.5
    script = model.run_action(H.action("Separate selection - drums"))
    model.run_until(function() return not model.running() end, 90)
    assert.are.equal(3, #item.takes)
    local target, residual = item.takes[2], item.takes[3]
    assert.are.equal(target, item.active) -- the original take is no longer the active one
    local job = target.ext.reasam_job
    local before = { target.source, residual.source }
    script = model.run_action(H.action("ReaSAM - job panel"))
    assert.is_true(until_row(job, function(r) return r.state == "done" and r.mine end))
    click("Import again", job)
    assert.is_true(model.run_until(function() return target.source ~= before[1] end, 10), model.console_text())
    assert.are.same({ "Mix" }, C.track_names(model)) -- no new tracks
    assert.are.equal(3, #item.takes) -- the earlier stem takes were replaced, not stacked
    assert.are.same({ orig, target, residual }, item.takes)
    assert.are_not.equal(before[2], residual.source)
    for _, tk in ipairs({ target, residual }) do
      assert.are.equal(job, tk.ext.reasam_job)
      assert.are.equal(0.5, tk.info.D_PANLAW)
    end
    assert.are.equal(3 * 44100, C.takes_sum(item, orig, { target, residual }))
    model.imgui_close = true
    assert.is_true(model.run_until(function() return not model.running() end, 10))
    healthy()
  end)

  it("keeps one request in flight and merges at most 8 jobs of an answer per tick", function()
    -- A UDP port where nothing answers: the panel asks, waits, and asks again, one at a time.
    new_model(CASES[1])
    local quiet = socket.udp()
    quiet:setsockname("127.0.0.1", 0)
    local _, port = quiet:getsockname()
    model.set_setting("port", port)
    script = model.run_action(H.action("ReaSAM - job panel"))
    local p = the_panel()
    -- The panel's clock (time_precise) moves 0.1 s a tick: 4 s of it, without waiting. Each
    -- request the quiet port gets is paired with the panel's record of it (when it sent it).
    local sent = {}
    quiet:settimeout(0)
    for _ = 1, 40 do
      model.clock_offset = model.clock_offset + 0.1
      model.tick()
      while quiet:receivefrom() do
        assert.is_truthy(p.inflight, "a request the panel does not wait for")
        sent[#sent + 1] = p.inflight.at
      end
    end
    quiet:close()
    -- one at a time: the next only once the last one's answer wait (1.5 s on UDP) ran out
    assert.is_true(#sent >= 3, "requests: " .. #sent)
    for i = 2, #sent do assert.is_true(sent[i] - sent[i - 1] > 1.5, "a second request while one was in flight") end
    assert.are.equal("not running", p.daemon.state)
    -- An answer of 20 jobs: merged 8, 8, 4 in three ticks; the list changes once, when all are in.
    local recent = {}
    for i = 1, 20 do
      recent[i] = { id = "j" .. i, state = "running", fraction = 0.25, started = os.time() - 40, stage = "separating" }
    end
    p:on_event({ type = "status", json = H.json_encode({ version = "x", running = { "j1" }, queued = 0,
      recent = recent }) }, 0)
    assert.are.equal(8, p:merge(os.time()))
    assert.are.equal(0, #p.rows)
    assert.are.equal(8, p:merge(os.time()))
    assert.are.equal(4, p:merge(os.time()))
    assert.are.equal(20, #p.rows)
    assert.are.equal(0, p:merge(os.time()))
    assert.matches("^2:0%d left$", p.rows[1].eta) -- 40 s for a quarter: two minutes to go
    assert.is_nil(script.env.package.loaded.panel_rows.eta({ state = "running", fraction = 0.001, started = 1 }, 50))
    -- Start with a reasam command that is not there: said as soon as the launcher ends.
    model.set_setting("reasam_command", dir .. "/no-such-reasam")
    click("Start daemon")
    assert.is_true(model.run_until(function()
      return (p.daemon.error or ""):find("reasam command was not found", 1, true) ~= nil
    end, 10), tostring(p.daemon.error))
    assert.are.equal("not running", p.daemon.state)
    model.imgui_close = true
    assert.is_true(model.run_until(function() return not model.running() end, 10))
    assert.is_nil(model.reaper.EnumerateFiles(model.resource .. "/ReaSAM/run", 0)) -- no helper files left
    healthy()
  end)

  it("elides a job's name and a message in the middle, by characters, keeping the file name", function()
    local rows = H.lib(H.model(), "panel_rows")
    assert.are.equal("abc", rows.elide("abc", 3))
    assert.are.equal("abcd...wxyz", rows.elide("abcdefghijklmnopqrstuvwxyz", 11))
    assert.are.equal("éé...éé", rows.elide(string.rep("é", 20), 7.0)) -- (a gfx width is a float)
    local job_row = { mine = true, prompt = "drums", source = "song.wav" }
    assert.are.equal("this project · drums: song.wav", rows.job_label(job_row, 40))
    job_row.source = string.rep("x", 30) .. "-take-3.wav"
    assert.are.equal("this project · drums: xxxxxxxx...e-3.wav", rows.job_label(job_row, 40))
    assert.are.equal("this project...-take-3.wav", rows.job_label(job_row, 26)) -- too narrow for more
  end)

  it("opens folders with SWS's CF_ShellExecute when it is there, else the platform's opener", function()
    local cases = {
      { "Win64", 'explorer.exe "C:\\p q"', "C:\\p q" },
      { "macOS-arm64", '/usr/bin/open "/p q"', "/p q" },
      { "Linux-x86_64", 'xdg-open "/p q"', "/p q" },
    }
    for _, os_case in ipairs(cases) do
      local m = H.model({ os_name = os_case[1], exec_env = "PATH='" .. bin .. "':\"$PATH\"" })
      local p = H.lib(m, "opener")
      assert.are.equal(os_case[2], p.open(os_case[3]))
      assert.are.same({ cmd = os_case[2], timeout = -1 }, m.exec[1])
      assert.is_nil(p.open('/a"b')) -- ExecProcess could not pass it
      local shell = {}
      m.reaper.CF_ShellExecute = function(path) shell[#shell + 1] = path end
      p.open(os_case[3])
      assert.are.same({ os_case[3] }, shell)
      assert.are.equal(1, #m.exec)
    end
  end)

  it("stops and starts the daemon, over UDP then over the reasam command line", function()
    for _, case in ipairs(CASES) do
      new_model(case)
      script = model.run_action(H.action("ReaSAM - job panel"))
      assert.is_true(model.run_until(function() return the_panel().daemon.state == "running" end, 30))
      local pid_before = d.pid
      click("Stop daemon")
      assert.is_true(model.run_until(function() return the_panel().daemon.state == "not running" end, 40),
        "the panel did not see the daemon stop")
      assert.is_true(model.run_until(function() return not D.pid_alive(pid_before) end, 30), "it still runs")
      click("Start daemon")
      assert.is_true(model.run_until(function() return the_panel().daemon.state == "running" end, 60),
        "the panel did not see the daemon start")
      local started = D.read_token(model.resource .. "/ReaSAM/daemon.pid")
      assert.is_true(D.pid_alive(started))
      d.pid = started -- the fixture stops this one at the end
      if model.imgui then model.imgui_close = true else model.gfx_keys[1] = -1 end
      assert.is_true(model.run_until(function() return not model.running() end, 10))
      healthy()
    end
  end)
end)
