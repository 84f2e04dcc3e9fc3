"""Building blocks of automatic mask generation (segment everything), in numpy: prompt grids and crops,
the background rule, quality filters, non-maximum suppression, RLE, and the outputs.
:mod:`medsam.inference.everything` puts them together."""
