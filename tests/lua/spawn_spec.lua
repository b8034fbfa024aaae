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
    local t0 = socket.gettime()
    local h = assert(spawn.command("t", { "/bin/sh", "-c", "sleep 0.3; echo 'out put'; echo oops >&2; exit 3" }))
    assert.is_true(socket.gettime() - t0 < 0.2) -- returned before the command ended
    assert.is_nil(h:poll())
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
end)
