-- Helper processes through ExecProcess(…, -1): results come back through files, never by waiting.
local H = require("helpers")
local socket = require("socket")

describe("spawn", function()
  teardown(function() H.cleanup() end)

  local model, spawn
  before_each(function()
    model = H.model()
    spawn = H.lib(model, "spawn")
  end)

  local function wait(h)
    local deadline = socket.gettime() + 10
    while socket.gettime() < deadline do
      local rc, out, err = h:poll()
      if rc then return rc, out, err end
      socket.sleep(0.02)
    end
    error("the helper process did not finish")
  end

  it("runs a command in the background and reads its exit code and output", function()
    -- The command ends only once the spec lets it: spawn.command returning and h:poll() saying
    -- "still running" prove it did not wait, however slow the machine.
    local go = H.tmpdir("go") .. "/go"
    local h = assert(spawn.command("t", { "/bin/sh", "-c",
      "while [ ! -e '" .. go .. "' ]; do sleep 0.02; done; echo 'out put'; echo oops >&2; exit 3" }))
    assert.is_nil(h:poll())
    io.open(go, "w"):close()
    local rc, out, err = wait(h)
    assert.are.equal(3, rc)
    assert.are.equal("out put\n", out)
    assert.are.equal("oops\n", err)
    assert.are.equal(-1, model.exec[1].timeout)
    -- nothing is left behind
    assert.are.equal(nil, model.reaper.EnumerateFiles(spawn.run_dir(), 0))
  end)

  it("quotes arguments with spaces and quotes", function()
    local h = assert(spawn.command("q", { "/bin/echo", "a b", "it's", "$HOME", "x\"y" }))
    local rc, out = wait(h)
    assert.are.equal(0, rc)
    assert.are.equal("a b it's $HOME x\"y\n", out)
  end)

  it("reports a missing program with exit code 127", function()
    local rc = wait(assert(spawn.command("m", { "/nonexistent/reasam", "ping" })))
    assert.are.equal(127, rc)
  end)

  it("a discarded helper runs to its end, then removes its own files; one that has ended goes at once", function()
    local stop = H.tmpdir("stop") .. "/go"
    local h = assert(spawn.command("d", { "/bin/sh", "-c", "while [ ! -e '" .. stop .. "' ]; do sleep 0.02; done; "
      .. "echo done > '" .. stop .. ".ran'" }))
    local ended = assert(spawn.command("e", { "/bin/echo", "hi" }))
    local deadline = socket.gettime() + 10
    while not io.open(ended.rc) and socket.gettime() < deadline do socket.sleep(0.02) end
    assert.are.equal(2, spawn.discard_all())
    assert.is_nil(io.open(ended.out)) -- ended: removed now
    assert.is_nil(h:poll())
    assert.is_truthy(io.open(h.script)) -- still running: its files stay until it ends
    io.open(stop, "w"):close()
    while model.reaper.EnumerateFiles(spawn.run_dir(), 0) and socket.gettime() < deadline do socket.sleep(0.02) end
    assert.is_nil(model.reaper.EnumerateFiles(spawn.run_dir(), 0))
    assert.is_truthy(io.open(stop .. ".ran")) -- it did run to its end
    assert.are.equal(0, spawn.discard_all())
  end)

  it("starts nothing and says so at once (exit code 127) when the program to detach is missing", function()
    local dir = H.tmpdir("detach")
    for _, program in ipairs({ dir .. "/no-such-reasam", "no-such-reasam-on-path", H.TESTS .. "/helpers.lua" }) do
      local h = assert(spawn.detached({ program, "serve" }, dir .. "/log", dir .. "/pid"))
      local rc, _, err = wait(h)
      assert.are.equal(127, rc, program)
      assert.matches("not found: ", err)
      assert.is_nil(io.open(dir .. "/pid"))
    end
    -- a program that exists is started, detached: the launcher ends before it does
    local h = assert(spawn.detached({ "/bin/sh", "-c", "echo started; sleep 0.5" }, dir .. "/log", dir .. "/pid"))
    assert.are.equal(0, (wait(h)))
    assert.is_truthy(io.open(dir .. "/pid"))
    assert.is_nil(model.reaper.EnumerateFiles(spawn.run_dir(), 0)) -- launcher and helper files gone
  end)

  it("sweeps what old runs left behind", function()
    local dir = spawn.run_dir()
    local old = dir .. "/ping-20200101-000000-abcdef-1-1.out"
    local new = dir .. "/ping-" .. os.date("%Y%m%d-%H%M%S") .. "-abcdef-1-1.out"
    io.open(old, "w"):close()
    io.open(new, "w"):close()
    assert.are.equal(1, spawn.sweep(3600))
    assert.is_nil(io.open(old))
    assert.is_truthy(io.open(new))
  end)

  it("is never a blocking call: the script environment refuses os.execute, io.popen, os.exit", function()
    local env = model.new_env("/none.lua")
    for _, call in ipairs({ "os.execute('sleep 5')", "io.popen('sleep 5')", "os.exit(0)" }) do
      local chunk = assert(load("return " .. call, "=spec", "t", env))
      local ok, err = pcall(chunk)
      assert.is_false(ok, call)
      assert.matches("in REAPER: use reaper.ExecProcess", err)
    end
    assert.are.same({ "os.execute", "io.popen", "os.exit" }, model.blocking_calls)
    -- ExecProcess that waits (timeout >= 0) is recorded too; -1 returns at once and is not
    assert.are.equal("", env.reaper.ExecProcess("true", -1))
    assert.matches("^0\n", env.reaper.ExecProcess("true", 1000))
    assert.are.same({ "os.execute", "io.popen", "os.exit", "ExecProcess(timeout 1000)" }, model.blocking_calls)
    -- file I/O stays
    local f = assert(env.io.open(H.TESTS .. "/helpers.lua", "rb"))
    f:close()
    assert.is_function(env.os.remove)
    assert.is_function(env.os.time)
    -- an action that blocks fails its run
    local dir = H.tmpdir("blocking")
    local action = dir .. "/Blocking action.lua"
    local out = assert(io.open(action, "w"))
    out:write(("os.execute('touch %s/ran')\n"):format(dir))
    out:close()
    model.run_action(action)
    assert.is_nil(io.open(dir .. "/ran")) -- refused, not run
    assert.are.equal(1, #model.errors)
    assert.matches("os.execute blocks the UI", model.errors[1])
  end)

  it("counts the socket calls that may wait and the bytes each tick reads, without timing them", function()
    local dir = H.tmpdir("ticks")
    local action = dir .. "/Ticks.lua"
    local out = assert(io.open(action, "w"))
    out:write([[
      local socket = require("socket")
      local u = socket.udp()
      u:setsockname("127.0.0.1", 0)
      u:settimeout(0)
      assert(u:receivefrom() == nil) -- non-blocking: nothing to read, returns at once
      local f = assert(io.open(]] .. ("%q"):format(H.TESTS .. "/helpers.lua") .. [[, "rb"))
      local text = f:read("a")
      f:close()
      reaper.defer(function()
        u:settimeout(0.01)
        u:receivefrom() -- may wait
        socket.sleep(0.01)
        socket.select({}, nil, 0) -- polls
        u:close()
      end)
      return text
    ]])
    out:close()
    model.run_action(action)
    assert.are.same({}, model.errors)
    assert.are.same({}, model.blocking_calls)
    local f = assert(io.open(H.TESTS .. "/helpers.lua", "rb"))
    local size = #f:read("a")
    f:close()
    assert.are.equal(size, model.max_tick_bytes)
    model.tick()
    assert.are.same({}, model.errors)
    assert.are.same({ "socket:receivefrom (timeout 0.01)", "socket.sleep(0.01)" }, model.blocking_calls)
    assert.are.equal(size, model.bytes_read)
  end)
end)

describe("quoting", function()
  teardown(function() H.cleanup() end)

  local posix, win
  setup(function()
    posix = H.lib(H.model(), "util")
    win = H.lib(H.model({ os_name = "Win64" }), "util")
  end)

  it("for /bin/sh: plain words as they are, the rest in single quotes", function()
    assert.are.equal("/usr/bin/reasam", posix.sh_quote("/usr/bin/reasam"))
    assert.are.equal("--prompt=-drums", posix.sh_quote("--prompt=-drums"))
    assert.are.equal("''", posix.sh_quote(""))
    assert.are.equal("'a b'", posix.sh_quote("a b"))
    assert.are.equal("'it'\\''s'", posix.sh_quote("it's"))
    assert.are.equal("'$HOME `x` \"q\" 100%'", posix.sh_quote('$HOME `x` "q" 100%'))
    assert.are.equal("reasam 'a b'", posix.command_line({ "reasam", "a b" }))
    assert.are.equal(posix.sh_quote("a b"), posix.quote("a b"))
  end)

  it("for a .cmd script line: double quotes, % doubled, trailing backslashes doubled", function()
    assert.are.equal("C:\\ReaSAM\\reasam.exe", win.win_quote("C:\\ReaSAM\\reasam.exe"))
    assert.are.equal('""', win.win_quote(""))
    assert.are.equal('"a b"', win.win_quote("a b"))
    assert.are.equal('"C:\\Program Files\\x"', win.win_quote("C:\\Program Files\\x"))
    assert.are.equal('"C:\\out dir\\\\"', win.win_quote("C:\\out dir\\")) -- \" would escape the quote
    -- cmd expands %VAR% even inside double quotes in a .cmd file: %% is a literal %
    assert.are.equal('"50%%"', win.win_quote("50%"))
    assert.are.equal('"--prompt=100%% %%PATH%% noise"', win.win_quote("--prompt=100% %PATH% noise"))
    assert.are.equal('"a&b|c<d>e^f"', win.win_quote("a&b|c<d>e^f"))
    assert.are.equal('"(x)"', win.win_quote("(x)"))
    assert.are.equal(win.win_quote("a b"), win.quote("a b"))
    assert.are.equal('reasam send "--prompt=a dog"', win.command_line({ "reasam", "send", "--prompt=a dog" }))
  end)

  it("refuses what cmd cannot pass, with a message that says what to do", function()
    local q, err = win.win_quote('--prompt=the "lead" vocal')
    assert.is_nil(q)
    assert.matches('cannot pass %-%-prompt=the "lead" vocal to a command on Windows', err)
    assert.matches("double quote", err)
    assert.matches("Mavriq Lua Sockets", err)
    assert.is_nil((win.win_quote("two\nlines")))
    local line, lerr = win.command_line({ "reasam", "send", 'say "hi"' })
    assert.is_nil(line)
    assert.matches("double quote", lerr)
    -- on POSIX the same is quoted, not refused
    assert.are.equal("'say \"hi\"'", posix.quote('say "hi"'))
  end)

  it("for PowerShell: single quotes, ' doubled", function()
    assert.are.equal("'C:\\Users\\O''Neil'", win.ps_quote("C:\\Users\\O'Neil"))
  end)
end)

describe("spawn on Windows (the scripts it writes)", function()
  teardown(function() H.cleanup() end)

  local model, spawn
  before_each(function()
    model = H.model({ os_name = "Win64" })
    spawn = H.lib(model, "spawn")
  end)

  it("records output and exit code of a command, % doubled", function()
    local text = assert(spawn.command_script({ "C:\\re sam\\reasam.exe", "send", "--prompt=100% snare" },
      { out = "C:\\R\\a.out", err = "C:\\R\\a.err", rc = "C:\\R\\a.rc" }))
    assert.are.equal(table.concat({
      "@echo off",
      '"C:\\re sam\\reasam.exe" send "--prompt=100%% snare" > C:\\R\\a.out 2> C:\\R\\a.err < NUL',
      "echo %ERRORLEVEL% > C:\\R\\a.rc.part",
      "move /Y C:\\R\\a.rc.part C:\\R\\a.rc > NUL",
      -- discarded by its owner: the files go, and the script itself
      "if not exist C:\\R\\a.rc.forget goto :eof",
      "del /F /Q C:\\R\\a.out C:\\R\\a.err C:\\R\\a.rc C:\\R\\a.rc.forget",
      '(goto) 2>nul & del "%~f0"',
      "",
    }, "\r\n"), text)
    assert.are.equal('cmd.exe /D /C ""C:\\R\\a b.cmd""', spawn.launch_command("C:\\R\\a b.cmd"))
  end)

  it("refuses a prompt with a double quote before starting anything", function()
    local h, err = spawn.command("send", { "reasam", "send", '--prompt=the "lead" vocal' })
    assert.is_nil(h)
    assert.matches("double quote", err)
    assert.are.equal(0, #model.exec)
  end)

  it("starts the daemon hidden, with its own output in the log and its process id in the pid file", function()
    local s = assert(spawn.detached_scripts({ "C:\\venv\\reasam.exe", "serve", "--port", "9797" },
      "C:\\Users\\O'Neil\\100%\\daemon.log", "C:\\Users\\O'Neil\\100%\\daemon.pid", "C:\\run\\start-1-run.cmd"))
    -- the runner runs the daemon itself, redirected: the log gets the daemon's output
    assert.are.equal(table.concat({
      "@echo off",
      'cd /D "%USERPROFILE%"',
      [[C:\venv\reasam.exe serve --port 9797 >> "C:\Users\O'Neil\100%%\daemon.log" 2>&1 < NUL]],
      "",
    }, "\r\n"), s.runner)
    assert.is_nil(s.runner:find("start ", 1, true))
    -- the launcher starts the runner through PowerShell, which gives its process id
    local lines = {}
    for l in s.launcher:gmatch("([^\r\n]+)") do lines[#lines + 1] = l end
    assert.are.equal("@echo off", lines[1])
    assert.are.equal('powershell.exe -NoProfile -NonInteractive -WindowStyle Hidden -Command "'
      .. "if (-not (Get-Command -Name 'C:\\venv\\reasam.exe' -ErrorAction SilentlyContinue)) { "
      .. "[Console]::Error.WriteLine('not found: ' + 'C:\\venv\\reasam.exe'); exit 9009 }; "
      .. "$p = Start-Process -FilePath 'C:\\run\\start-1-run.cmd' -WindowStyle Hidden -PassThru; "
      .. "[IO.File]::WriteAllText('C:\\Users\\O''Neil\\100%%\\daemon.pid', [string]$p.Id)\"", lines[2])
    assert.are.equal("exit /b %ERRORLEVEL%", lines[3]) -- the launcher's exit code is its helper's
  end)

  it("on POSIX: setsid in the background, $! in the pid file, the daemon's output in the log", function()
    local posix = H.lib(H.model(), "spawn")
    local s = assert(posix.detached_scripts({ "/opt/re sam/reasam", "serve" }, "/tmp/x/daemon.log", "/tmp/x/d.pid"))
    assert.is_nil(s.runner)
    assert.matches("\n  setsid '/opt/re sam/reasam' serve >> /tmp/x/daemon.log 2>&1 < /dev/null &\n", s.launcher)
    assert.matches("\necho %$! > /tmp/x/d.pid\n", s.launcher)
  end)
end)
