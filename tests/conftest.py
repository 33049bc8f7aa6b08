import os
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS",
                      "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
# One compilation cache for the whole session, the CLI's subprocesses included: the tiny
# programs the tests run again and again compile once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"inforeg-jax-tests-{os.getuid()}"))

# Tests of 2 s or more on 2 cores (`pytest --durations=0`, warm compile cache): whole runs,
# subprocess CLIs, end-to-end preparations, big models, the longest jitted steps. `make check`
# leaves them out (`-m "not slow"`); `make test` (CI) runs everything. Tests in files of other
# owners are listed here by node id (a prefix); our own files mark theirs @pytest.mark.slow.
SLOW = (
    "tests/test_methods_e2e.py::",
    "tests/test_distributed.py::",
    "tests/test_failure_modes.py::",
    "tests/test_trainer_runs.py::",
    "tests/test_gpu_image_imports.py::",
    "tests/test_run.py::",
    "tests/test_prep_kinetics.py::test_kinetics_sounds_prep_end_to_end",
    "tests/test_prep_mosi.py::test_mosi_prep_and_three_modality_run",
    "tests/test_prep_cremad.py::test_cremad_prep_end_to_end",
    "tests/test_prep_cremad.py::test_split_dir_and_resume_from_cache",
    "tests/test_prep_avmnist.py::test_prepares_every_image_reports_skips_is_idempotent_and_trains",
    "tests/test_prep_avmnist.py::test_real_fsdd_and_mnist",
    "tests/test_prep_avmnist.py::test_smaller_audio_and_a_new_version_replaces_the_old",
    "tests/test_models.py::test_resnet18_layout_and_init",
    "tests/test_models.py::test_bf16_compute_keeps_fp32_params",
    "tests/test_models.py::test_sequence_encoder_for_three_modalities",
    "tests/test_golden_greedy.py::test_curation_step_cuts_the_caring_modality_fc_gradient",
    "tests/test_golden_agm.py::test_tiny_model_three_official_steps",
    "tests/test_greedy.py::test_forward_defaults_and_the_fused_logits",
    "tests/test_properties.py::test_inforeg_finite_warmup_and_anchor",
    "tests/test_properties.py::test_ogm_ge_prime_and_other_partition_whole",
    "tests/test_properties.py::test_ogm_ge_finite_and_only_inside_its_epochs_and_gate",
    "tests/test_train_step.py::test_step_gradient_trace_optimizer_inputs_and_metrics",
    "tests/test_train_step.py::test_step_window_gate_and_context",
    "tests/test_train_step.py::test_step_with_inforeg_regulates_inside_the_jit",
    "tests/test_train_step.py::test_step_with_a_finite_loss_but_non_finite_trace_is_skipped",
    "tests/test_train_step.py::test_step_preprocess_in_training_mode",
    "tests/test_train_step.py::test_step_non_finite_is_skipped",
    "tests/test_prep_avmnist.py::test_tfds_mnist_source",
    "tests/test_prep_avmnist.py::test_mnist_training_set_gives_train_and_val",
    "tests/test_prep_cremad.py::test_bad_split_file_and_missing_dir",
    "tests/test_agm.py::test_coefficients_are_one_outside_the_window",
    "tests/test_properties.py::test_inforeg_prime_and_other_partition_whole",
    "tests/test_regulation.py::test_bounded_and_trend_criteria_pass_through",
    "tests/test_ogm_ge.py::test_transform_scales_weights_adds_noise_and_keeps_the_rest",
    "tests/test_methods.py::test_gradients_sum_of_terms_and_the_fused_trace",
    "tests/test_methods.py::test_inforeg_method_transform_options",
)


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: 2 s or more; `make check` leaves it out")


def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.nodeid.startswith(SLOW):
      item.add_marker(pytest.mark.slow)
