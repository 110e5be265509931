"""The pixel limit's default, one source for the Pillow reader (``pipelines.images``) and the export's
serving graph (``model.export``): Pillow's own decompression-bomb warning limit (~89.5 Mpx)."""
DEFAULT_MAX_PIXELS = 89_478_485   # 1024 * 1024 * 1024 // 4 // 3
