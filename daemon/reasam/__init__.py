"""ReaSAM: prompt-driven source separation for REAPER, served by a warm local daemon."""

__version__ = "0.1.0"
