"""Pure-numpy preprocessing: intensity handling, geometry (resize, pad, coordinate transforms) and the
orientation volumes are seen in (axis permutations and flips between the stored and the view frame)."""
