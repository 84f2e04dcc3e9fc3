"""Pure-numpy preprocessing: intensity handling and geometry (resize, pad, coordinate transforms)."""
