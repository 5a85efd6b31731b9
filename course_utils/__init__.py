"""Shared helpers for the convolutional-autoencoder course: ``import course_utils as cu``.

Core modules, by role (each imports only the ones above it):

- ``errors``: `CourseError` and its kinds, for mistakes a learner can fix (and `LearnedNothingWarning`).
- ``environment``: device, seeding, the hardware profile that sizes every experiment, the setup line.
- ``files``: atomic writes, so no reader ever sees half a file.
- ``data``: datasets as uint8 tensors (packs, system copies, downloads), your own pictures, batches.
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

- ``ch02_pooling_vs_strided``: influence maps, shifted images, shift sensitivity, the chapter's models.
- ``ch03_transposed_convolutions``: overlap, error and edge maps, grid contrast, the chapter's decoders.
- ``ch04_bottleneck_size``: compression tables, code shapes, the one-pass PCA curve, sharpness, two pitfalls
  (image edits for what MSE rewards, reconstructions batch by batch for what batch norm couples).
- ``ch05_fast_training``: generated from the notebook: the learner's ``device_batches`` and ``train_epoch_fast``.
- ``_ch05_measurements``: the seed tutorials' loop, timed blocks and ladders, GPU memory by batch size, stored GPU runs.
- ``ch06_denoising``: corruptions for ``fit(input_transform=...)``, classical filters, scores per noise level.
- ``ch07_anomaly_detection``: one-class splits, PCA and autoencoder anomaly scores, ROC-AUC, thresholds, OOD inputs.
- ``ch08_latent_space``: 2-D maps of codes, retrieval and precision@k, linear probes, interpolation, random codes.
- ``ch10_distributed``: launching ``python -m course_utils.train`` with torchrun, a sharded DataLoader, all-reduce.

Everything in ``__all__`` is reachable as ``cu.<name>``; the rest by module path
(e.g. ``cu.data.pack_path``).
"""
__version__ = "0.1.0"

# --------------------------------------------------------------------------- core
from .errors import (CheckpointError, CorruptPackError, CourseError, DataNotFoundError, LearnedNothingWarning,
                     TrainingDivergedError)
from .environment import (PROFILES, Profile, cpu_name, describe_setup, get_device, get_profile, seed_everything,
                          start_chapter)
from .data import (DeviceBatches, ImageData, ImageDataset, flip_half, inspect_image_folder, load_dataset,
                   load_image_folder, random_patches, read_pack, read_photos, resize_images, to_float, to_uint8,
                   validation_split, write_pack)
from .models import (RECOMMENDED_TRAINING, ConvAutoencoder, ConvClassifier, ConvDecoder, ConvEncoder,
                     conv_output_size, conv_transpose_output_size, count_parameters, recommended_autoencoder,
                     transposed_padding)
from .replicas import (AnothertechsAutoencoder, GeeksforGeeksAutoencoder, KapilshAutoencoder,
                       PaperspaceAutoencoder, UvATutorial9Autoencoder)
from .engine import TrainStep, cpu_has_native_bf16, eval_mode, finish_data_parallel, join_data_parallel, resolve_amp
from .metrics import (accuracy, embed_images, evaluate, pca_baseline, pca_parameters, per_image_errors,
                      psnr_from_mse, reconstruct)
from .training import History, fit, fit_classifier, fit_with_batch_fallback, load_checkpoint, save_checkpoint
from .pretrained import PretrainedError, has_pretrained, load_or_train, load_pretrained, pretrained_info, pretrained_names
from .layers import feature_maps, flops_per_image, layer_table, receptive_field
from .timing import Throughput, TimedSteps, interleave, matmul_flops, measure_throughput, speedup_table, training_flops
from .experiments import Comparison, code_size, compare_models, sweep_code_sizes
from .exercises import check_answer, show_solution
from .plots import (plot_comparison, plot_losses, plot_speedups, results_table, show_feature_maps, show_images,
                    show_reconstructions)

# --------------------------------------------------------------------------- chapters
from .chapters.ch02_pooling_vs_strided import (influence_map, plot_receptive_fields, plot_shift_sensitivity,
                                               shift_images, shift_sensitivity, shift_sensitivity_at_init)
from .chapters.ch03_transposed_convolutions import (edge_map, error_map, grid_contrast, grid_tile, overlap_map,
                                                    plot_over_seeds)
from .chapters.ch04_bottleneck_size import (bottleneck_map, code_shape, compression_table, gradient_energy,
                                            pca_curve, plot_code_size_curve, spatial_code_size)
from .chapters._ch05_measurements import (climb_ladder, fit_tutorial_style, gpu_ladder_lessons, gpu_results,
                                          improvement_ladder, peak_memory_by_batch_size, timed_block,
                                          tutorial_transform)
from .chapters.ch06_denoising import (Cutout, GaussianNoise, SaltAndPepper, beats_best_filter,
                                      choose_filter_parameter, corrupt, cross_sigma_table, denoising_frame,
                                      denoising_scores, gaussian_blur, image_scores, median_filter, per_image_psnr,
                                      plot_filter_tuning, plot_psnr_vs_sigma, restoration_scores, show_worst_cases)
from .chapters.ch07_anomaly_detection import (OneClassRun, anomaly_labels, auc_difference, auc_differences,
                                              auc_table, cifar_classes, digits_images, fit_pca, one_class,
                                              one_class_budget, one_class_runs, ood_inputs, ood_table, pca_errors,
                                              plot_auc_table, plot_error_histograms, plot_roc_curves, rates_table,
                                              roc_auc, show_extremes, threshold_at, threshold_rates, train_one_class)
from .chapters.ch08_latent_space import (decode_codes, embed_2d, interpolate, interpolation_strips, linear_probe,
                                         nearest_neighbours, odd_images, plot_2d_maps, precision_at_k, probe_features,
                                         retrieval_rows, round_trip_change, sample_codes, show_rows)
from .chapters.ch10_distributed import (UInt8Images, all_reduce_demo, run_torchrun, scaled_lr, sharded_loader,
                                        torchrun_train)

__all__ = [
    # errors
    "CheckpointError", "CorruptPackError", "CourseError", "DataNotFoundError", "LearnedNothingWarning",
    "TrainingDivergedError",
    # environment
    "PROFILES", "Profile", "cpu_name", "describe_setup", "get_device", "get_profile", "seed_everything",
    "start_chapter",
    # data
    "DeviceBatches", "ImageData", "ImageDataset", "flip_half", "inspect_image_folder", "load_dataset",
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
    "accuracy", "embed_images", "evaluate", "pca_baseline", "pca_parameters", "per_image_errors", "psnr_from_mse",
    "reconstruct",
    # training
    "History", "fit", "fit_classifier", "fit_with_batch_fallback", "load_checkpoint", "save_checkpoint",
    # pretrained
    "PretrainedError", "has_pretrained", "load_or_train", "load_pretrained", "pretrained_info", "pretrained_names",
    # layers
    "feature_maps", "flops_per_image", "layer_table", "receptive_field",
    # timing
    "Throughput", "TimedSteps", "interleave", "matmul_flops", "measure_throughput", "speedup_table", "training_flops",
    # exercises
    "check_answer", "show_solution",
    # experiments
    "Comparison", "code_size", "compare_models", "sweep_code_sizes",
    # plots
    "plot_comparison", "plot_losses", "plot_speedups", "results_table", "show_feature_maps", "show_images",
    "show_reconstructions",
    # chapter 02: pooling vs strided encoders
    "influence_map", "plot_receptive_fields", "plot_shift_sensitivity", "shift_images", "shift_sensitivity",
    "shift_sensitivity_at_init",
    # chapter 03: transposed convolutions
    "edge_map", "error_map", "grid_contrast", "grid_tile", "overlap_map", "plot_over_seeds",
    # chapter 04: bottleneck size
    "bottleneck_map", "code_shape", "compression_table", "gradient_energy", "pca_curve", "plot_code_size_curve",
    "spatial_code_size",
    # chapter 05: fast training
    "climb_ladder", "fit_tutorial_style", "gpu_ladder_lessons", "gpu_results", "improvement_ladder",
    "peak_memory_by_batch_size", "timed_block", "tutorial_transform",
    # chapter 06: denoising autoencoders
    "Cutout", "GaussianNoise", "SaltAndPepper", "beats_best_filter", "choose_filter_parameter", "corrupt",
    "cross_sigma_table", "denoising_frame", "denoising_scores", "gaussian_blur", "image_scores", "median_filter",
    "per_image_psnr", "plot_filter_tuning", "plot_psnr_vs_sigma", "restoration_scores", "show_worst_cases",
    # chapter 07: anomaly detection
    "OneClassRun", "anomaly_labels", "auc_difference", "auc_differences", "auc_table", "cifar_classes",
    "digits_images", "fit_pca", "one_class", "one_class_budget", "one_class_runs", "ood_inputs", "ood_table",
    "pca_errors", "plot_auc_table", "plot_error_histograms", "plot_roc_curves", "rates_table", "roc_auc",
    "show_extremes", "threshold_at", "threshold_rates", "train_one_class",
    # chapter 08: the latent space
    "decode_codes", "embed_2d", "interpolate", "interpolation_strips", "linear_probe", "nearest_neighbours",
    "odd_images", "plot_2d_maps", "precision_at_k", "probe_features", "retrieval_rows", "round_trip_change",
    "sample_codes", "show_rows",
    # chapter 10: beyond one device
    "UInt8Images", "all_reduce_demo", "run_torchrun", "scaled_lr", "sharded_loader", "torchrun_train",
]
