@echo off
rem ReaSAM daemon at Windows log-in. Installed by `reasam install-service` into the Startup
rem folder, which fills in the Python that has ReaSAM installed. Logs: %LOCALAPPDATA%\ReaSAM\logs
start "ReaSAM daemon" /min "@PYTHON@" -m reasam.cli serve @ARGS@
