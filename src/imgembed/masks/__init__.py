"""Binary masks: run-length encodings, PNG, polygons, boxes, non-maximum suppression, regions.

Pure functions on NumPy arrays and torch tensors; nothing here loads a model or keeps state.

- :mod:`imgembed.masks.rle`: COCO RLE, compressed (``pycocotools``' ``counts`` string) and
  uncompressed (Meta's ``amg`` lists of run lengths).
- :mod:`imgembed.masks.png`: a mask as a PNG file.
- :mod:`imgembed.masks.polygons`: a mask as COCO polygons that re-rasterise to the same pixels.
- :mod:`imgembed.masks.boxes`: boxes and areas of masks, box IoU, non-maximum suppression.
- :mod:`imgembed.masks.regions`: connected components, hole filling and sprinkle removal.
"""
