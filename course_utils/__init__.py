"""Shared helpers for the convolutional-autoencoder course: ``import course_utils as cu``.

Split by role: ``environment`` (device, seeds, profiles), ``data`` (loading, packs, batches),
``models`` (encoders, decoders, bottlenecks, seed replicas), ``training`` (fit, checkpoints),
``metrics`` (MSE, PSNR, SSIM, PCA baseline) and ``plots`` (figures).
"""
from .data import (DATASETS, DeviceBatches, ImageData, ImageDataset, data_root, load_dataset,
                   load_image_folder, pack_path, read_pack, resize_images, to_float, to_uint8, write_pack)
from .environment import PROFILES, Profile, cpu_name, describe_setup, get_device, get_profile, in_colab, seed_everything
from .errors import CheckpointError, CorruptPackError, CourseError, DataNotFoundError, TrainingDivergedError
from .metrics import accuracy, embed_images, evaluate, pca_baseline, per_image_errors, psnr_from_mse, reconstruct
from .models import (SEED_MODELS, ConvClassifier, AnothertechsAutoencoder, ConvAutoencoder, ConvDecoder, ConvEncoder,
                     FlatBottleneck, GeeksforGeeksAutoencoder, KapilshAutoencoder, PaperspaceAutoencoder,
                     SpatialBottleneck, conv_output_size, conv_transpose_output_size, count_parameters,
                     flops_per_image, make_activation, recommended_autoencoder, transposed_padding,
                     RECOMMENDED_TRAINING)
from .plots import plot_comparison, plot_losses, results_table, show_feature_maps, show_images, show_reconstructions
from .training import History, check_model_fits, fit, fit_classifier, fit_with_batch_fallback, load_checkpoint, save_checkpoint

__version__ = "0.1.0"
from .experiments import Comparison, code_size, compare_models
from .inspect import feature_maps, layer_table, receptive_field
from .timing import Throughput, TimedSteps, interleave, matmul_flops, measure_throughput, speedup_table, training_flops
from .chapters.ch05_fast_training import fit_tutorial_style, improvement_ladder, peak_memory_by_batch_size, tutorial_transform
from .engine import TrainStep, cpu_has_native_bf16, eval_mode, resolve_amp
from .upsampling import edge_map, error_map, fold_tiles, grid_contrast, grid_tile, overlap_map, upsampling_layer
from .downsampling import influence_map, plot_receptive_fields, plot_shift_sensitivity, shift_images, shift_sensitivity
from .bottleneck import (bottleneck_map, code_shape, compression_table, gradient_energy, pca_curve, plot_code_size_curve, spatial_code_size, sweep_code_sizes)
