"""Helpers that only one chapter needs, one module per chapter, named after its notebook.

- ``ch02_pooling_vs_strided``: influence maps, shifted images, shift sensitivity, the chapter's models.
- ``ch03_transposed_convolutions``: overlap, error and edge maps, grid contrast, the chapter's decoders.
- ``ch04_bottleneck_size``: compression tables, code shapes, the one-pass PCA curve, sharpness, curve plots,
  image edits (what MSE rewards) and reconstructions batch by batch (what batch normalisation couples).
- ``ch05_fast_training``: generated from the notebook's ``#@save`` cells: ``device_batches``, ``train_epoch_fast``.
- ``_ch05_measurements``: chapter 05's hand-written helpers: the seed tutorials' loop, timed blocks, the ladders
  (``climb_ladder``, ``improvement_ladder``), GPU memory by batch size, stored GPU runs. Its name does not start
  with ``ch05_`` because ``tools/save_cells.py`` writes a chapter's saved cells into its one ``chNN_*.py`` module.
- ``ch07_anomaly_detection``: one-class splits, PCA and autoencoder anomaly scores, ROC-AUC, thresholds, OOD.

The core modules (``course_utils.data``, ``models``, ``engine``, ``training``, ...) hold what
several chapters use; a helper moves down into the core as soon as a second chapter needs it.
"""
