"""Layer 0, core: errors, console output, file helpers and process helpers. Imports the standard library only."""
