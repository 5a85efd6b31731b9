"""Helpers that only one chapter needs, one module per chapter, named after its notebook.

- ``ch02_pooling_vs_strided``: generated from the notebook's ``#@save`` cells: ``influence_map``, ``pool_stage``,
  ``strided_stage``, ``StageEncoder``, ``shift_images``, ``code_change``.
- ``_ch02_experiments``: chapter 02's hand-written helpers: its configurations and ``ours`` (chapter 01's
  autoencoder with a ``StageEncoder``), shift sensitivity over batches and at initialisation, the figures.
- ``ch03_transposed_convolutions``: generated from the notebook's ``#@save`` cells: ``TransposedStage``,
  ``overlap_map``, ``ResizeStage``, ``GrowingDecoder``.
- ``_ch03_comparison``: chapter 03's hand-written part: its five autoencoders (``DECODERS``, ``chapter_model``),
  training over seeds, error and edge maps, grid contrast.
- ``ch04_bottleneck_size``: generated from the notebook's ``#@save`` cells: ``FlatBottleneck``, ``SpatialBottleneck``,
  ``BottleneckAutoencoder`` (chapter 01's encoder and decoder with a bottleneck between them).
- ``_ch04_analysis``: chapter 04's hand-written helpers: compression tables, code shapes, the PCA curve, sharpness,
  curve plots, image edits (what MSE rewards) and reconstructions batch by batch (what batch normalisation couples).
- ``ch05_fast_training``: generated from the notebook's ``#@save`` cells: ``device_batches``, ``train_epoch_fast``.
- ``_ch05_measurements``: chapter 05's hand-written helpers: the seed tutorials' loop, timed blocks, the ladders
  (``climb_ladder``, ``improvement_ladder``), GPU memory by batch size, stored GPU runs. Its name does not start
  with ``ch05_`` because ``tools/save_cells.py`` writes a chapter's saved cells into its one ``chNN_*.py`` module.
- ``ch07_anomaly_detection``: generated from the notebook: the learner's anomaly score, ROC-AUC and threshold.
- ``_ch07_experiments``: chapter 07's one-class runs beside PCA, checked AUCs, bootstrap, tables, OOD inputs, figures.
- ``ch09_your_own_images``: generated from the notebook's ``#@save`` cells: ``center_square``, ``read_image_folder``,
  ``PictureFolder``, ``split_train_val``, ``hold_out``, ``Code100Autoencoder``.
- ``_ch09_materials``: chapter 09's hand-written plumbing: sample photos and credits, the PNG folder, the image-size
  table, optional datasets, the cost of a training step.
- ``ch11_codec``: generated from the notebook's ``#@save`` cells: ``quantise``, ``dequantise``, ``HistogramCoder``
  (per-dimension histograms and a ``constriction`` range coder), ``compress``, ``decompress``, ``FactorizedPrior``,
  ``rate_distortion_loss``, ``fine_tune_for_rate``.
- ``_ch11_codecs``: chapter 11's hand-written plumbing: JPEG and WebP files with and without headers, the learner's
  codec over a split, curves compared at equal PSNR, photos cut into tiles, the figures.
- ``ch12_vae``: generated from the notebook's ``#@save`` cells: the learner's VAE on chapter 01's ``Encoder`` and
  ``Decoder``, ``reparameterise``, ``kl_to_standard_normal``, ``gaussian_nll``, ``vae_loss``, ``train_epoch_vae``,
  ``evaluate_vae``, ``dequantise``, ``bits_per_dim``.

The core modules (``course_utils.data``, ``models``, ``engine``, ``training``, ...) hold what
several chapters use; a helper moves down into the core as soon as a second chapter needs it.
"""
