"""Shared helpers for the convolutional-autoencoder course: ``import course_utils as cu``.

Core modules, by role (each imports only the ones above it):

- ``errors``: `CourseError` and its kinds, for mistakes a learner can fix (and `LearnedNothingWarning`).
- ``environment``: device, seeding, the hardware profile that sizes every experiment, the setup line.
- ``files``: atomic writes, so no reader ever sees half a file.
- ``data``: datasets as uint8 tensors (packs, system copies, downloads), batches.
- ``folders``: your own pictures: a folder as a dataset (cached), a few photos, patches.
- ``pictures``: picture files decoded into uint8 arrays (shared by ``folders`` and ``data``).
- ``models``: encoder and decoder blocks, bottlenecks, `ConvAutoencoder`, the recommended recipe, a classifier.
- ``replicas``: exact replicas of the seed tutorials' models (and UvA tutorial 9's), each with ``encode``.
- ``engine``: the training step, written once (`TrainStep`), `eval_mode`, the device choices, data parallelism.
- ``metrics``: MSE, PSNR and SSIM over a split, reconstructions, codes, accuracy, the PCA baseline.
- ``training``: `fit` (resumable, data-parallel under torchrun), `fit_classifier`, `History`, checkpoints.
- ``pretrained``: reference models trained to convergence, shipped and hash-checked (`load_or_train`).
- ``layers``: look inside a network: layer tables, receptive fields, feature maps, FLOPs.
- ``timing``: honest speed measurements (timed blocks, medians, turns) and FLOP/s.
- ``experiments``: controlled comparisons and code-size sweeps (`Comparison`).
- ``exercises``: exercises that check themselves (`check_answer`, `show_solution`), one module per chapter.
- ``plots``: figures (matplotlib is imported only when one is drawn).

Chapter-only helpers, one module per chapter (``course_utils.chapters``):

- ``ch02_pooling_vs_strided``: generated from the notebook: the learner's pooling and strided stages, ``StageEncoder``,
  ``influence_map``, ``shift_images``, ``code_change``.
- ``_ch02_experiments``: the chapter's configurations and ``ours``, shift sensitivity over batches, its plots.
- ``ch03_transposed_convolutions``: generated from the notebook: the learner's decoder stages and overlap map.
- ``_ch03_comparison``: the chapter's five autoencoders, training over seeds, error and edge maps, grid contrast.
- ``ch04_bottleneck_size``: generated from the notebook: the learner's flat and spatial bottlenecks and autoencoder.
- ``_ch04_analysis``: compression tables, code shapes, the PCA curve, sharpness, two pitfalls (image edits for
  what MSE rewards, reconstructions batch by batch for what batch norm couples).
- ``ch05_fast_training``: generated from the notebook: the learner's ``device_batches`` and ``train_epoch_fast``.
- ``_ch05_measurements``: the seed tutorials' loop, timed blocks and ladders, GPU memory by batch size, stored GPU runs.
- ``ch06_denoising``: generated from the notebook: the learner's corruptions, ``Denoiser`` and denoising loop.
- ``_ch06_scores``: chapter 06's classical filters tuned on validation, scores per noise level, tables and figures.
- ``ch07_anomaly_detection``: generated from the notebook: the learner's ``anomaly_scores``, ``roc_auc``,
  ``threshold_at`` and ``threshold_rates``.
- ``_ch07_experiments``: one-class splits and runs beside PCA, checked AUCs and thresholds, a paired bootstrap,
  tables, out-of-distribution inputs, figures.
- ``ch08_latent_space``: generated from the notebook: the learner's encoding, neighbours and precision@k,
  interpolation, decoding and random codes.
- ``_ch08_analysis``: the chapter's models, 2-D maps, the linear probe's regularisation path, round trips, figures.
- ``ch09_your_own_images``: generated from the notebook: the learner's folder reader (``read_image_folder``,
  ``PictureFolder``), ``split_train_val``, ``hold_out`` and ``Code100Autoencoder``.
- ``_ch09_materials``: the sample-photo folder and its credits, the PNG folder, the image-size table, optional
  datasets, the cost of a training step.
- ``ch10_distributed``: generated from the notebook: the learner's ``scaled_lr`` and ``train_data_parallel``.
- ``_ch10_launch``: a worker on N processes, ``python -m course_utils.train`` under torchrun, all-reduce.

Everything in ``__all__`` is reachable as ``cu.<name>``; the rest by module path
(e.g. ``cu.data.pack_path``).
"""
__version__ = "0.1.0"

# --------------------------------------------------------------------------- core
from .errors import (CheckpointError, CorruptPackError, CourseError, DataNotFoundError, LearnedNothingWarning,
                     TrainingDivergedError)
from .environment import (PROFILES, Profile, cpu_name, describe_setup, get_device, get_profile, seed_everything,
                          start_chapter)
from .data import (DeviceBatches, ImageData, ImageDataset, UInt8Images, flip_half, load_dataset, read_pack,
                   resize_images, to_float, to_uint8, validation_split, write_pack)
from .folders import inspect_image_folder, load_image_folder, random_patches, read_photos
from .models import (RECOMMENDED_TRAINING, ConvAutoencoder, ConvClassifier, ConvDecoder, ConvEncoder,
                     conv_output_size, conv_transpose_output_size, count_parameters, recommended_autoencoder,
                     transposed_padding)
from .replicas import (AnothertechsAutoencoder, GeeksforGeeksAutoencoder, KapilshAutoencoder,
                       PaperspaceAutoencoder, UvATutorial9Autoencoder)
from .engine import TrainStep, cpu_has_native_bf16, eval_mode, finish_data_parallel, join_data_parallel, resolve_amp
from .metrics import (accuracy, embed_images, evaluate, fit_pca, pca_baseline, pca_errors, pca_parameters,
                      pca_reconstruct, per_image_errors, psnr_from_mse, reconstruct)
from .training import (History, Recipe, fit, fit_classifier, fit_with_batch_fallback, load_checkpoint, save_checkpoint,
                       sharded_loader)
from .pretrained import has_pretrained, load_or_train, load_pretrained, pretrained_info, pretrained_names
from .layers import feature_maps, flops_per_image, layer_table, receptive_field
from .timing import Throughput, interleave, matmul_flops, measure_throughput, speedup_table
from .experiments import Comparison, code_size, compare_models, sweep_code_sizes
from .exercises import check_answer, show_solution
from .plots import (plot_comparison, plot_losses, plot_speedups, results_table, show_feature_maps, show_images,
                    show_reconstructions, show_rows)

__all__ = [
    # errors
    "CheckpointError", "CorruptPackError", "CourseError", "DataNotFoundError", "LearnedNothingWarning",
    "TrainingDivergedError",
    # environment
    "PROFILES", "Profile", "cpu_name", "describe_setup", "get_device", "get_profile", "seed_everything",
    "start_chapter",
    # data
    "DeviceBatches", "ImageData", "ImageDataset", "UInt8Images", "flip_half", "inspect_image_folder", "load_dataset",
    "load_image_folder", "random_patches", "read_pack", "read_photos", "resize_images", "to_float", "to_uint8",
    "validation_split", "write_pack",
    # models
    "RECOMMENDED_TRAINING", "ConvAutoencoder", "ConvClassifier", "ConvDecoder", "ConvEncoder", "conv_output_size",
    "conv_transpose_output_size", "count_parameters", "recommended_autoencoder", "transposed_padding",
    # replicas
    "AnothertechsAutoencoder", "GeeksforGeeksAutoencoder", "KapilshAutoencoder", "PaperspaceAutoencoder",
    "UvATutorial9Autoencoder",
    # engine
    "TrainStep", "cpu_has_native_bf16", "eval_mode", "finish_data_parallel", "join_data_parallel", "resolve_amp",
    # metrics
    "accuracy", "embed_images", "evaluate", "fit_pca", "pca_baseline", "pca_errors", "pca_parameters",
    "pca_reconstruct", "per_image_errors", "psnr_from_mse", "reconstruct",
    # training
    "History", "Recipe", "fit", "fit_classifier", "fit_with_batch_fallback", "load_checkpoint", "save_checkpoint",
    "sharded_loader",
    # pretrained
    "has_pretrained", "load_or_train", "load_pretrained", "pretrained_info", "pretrained_names",
    # layers
    "feature_maps", "flops_per_image", "layer_table", "receptive_field",
    # timing
    "Throughput", "interleave", "matmul_flops", "measure_throughput", "speedup_table",
    # exercises
    "check_answer", "show_solution",
    # experiments
    "Comparison", "code_size", "compare_models", "sweep_code_sizes",
    # plots
    "plot_comparison", "plot_losses", "plot_speedups", "results_table", "show_feature_maps", "show_images",
    "show_reconstructions", "show_rows",
]
