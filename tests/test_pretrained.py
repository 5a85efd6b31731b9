"""Reference models: every shipped one loads, matches its hash and reproduces its recorded score; tampering is caught."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import course_utils as cu
from course_utils import pretrained as pt

import data_policy
from conftest import load_script

TOLERANCE = 1e-3  # relative: the same float32 arithmetic on another CPU or thread count differs in the last digits


@pytest.mark.parametrize("name", pt.pretrained_names(pt.AUTOENCODER))
def test_reference_loads_and_reproduces_its_recorded_score(name):
    row = cu.pretrained_info(name)
    assert cu.has_pretrained(name), f"{row['file']} is missing from course_utils/pretrained/"
    assert pt.file_sha256(pt.PRETRAINED_DIR / row["file"]) == row["sha256"]
    assert row["bytes"] <= 5_000_000
    data_policy.require_dataset(row["dataset"])
    model = cu.load_pretrained(name)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert model.code_size == row["code_size"]
    check = cu.evaluate(model, cu.load_dataset(row["dataset"], "test").subset(row["check_images"]), ssim=False)
    assert check["mse"] == pytest.approx(row["check_mse"], rel=TOLERANCE)


def test_references_fit_the_size_budget():
    rows = [cu.pretrained_info(n) for n in pt.pretrained_names()]
    assert sum(r["bytes"] for r in rows) <= 20_000_000
    for r in rows:
        assert (pt.PRETRAINED_DIR / r["file"]).stat().st_size == r["bytes"]


def test_each_shipped_reference_has_the_architecture_the_training_script_names():
    script = load_script("benchmarks/train_references.py")
    for name in pt.pretrained_names(pt.AUTOENCODER):
        row, spec = cu.pretrained_info(name), script.REFERENCES[name]
        shape = (1, 28, 28) if spec["dataset"] == "fashion-mnist" else (3, 32, 32)
        assert row["architecture"] == script.architecture(shape, spec["code_size"], spec["bottleneck"],
                                                          spec["base_width"]), name


def test_gpu_trained_references_say_where_and_how_they_were_chosen():
    gpu = [cu.pretrained_info(n) for n in pt.pretrained_names() if cu.pretrained_info(n).get("device") == "cuda"]
    for row in gpu:
        assert "H200" in row["machine"] and "gpu_suite.py" in row["command"] and "--import-gpu" in row["command"]
        assert row["selection"].startswith("best validation MSE of") and row["wall_seconds"] <= 80
        assert row["bytes"] <= 5_000_000 and row["recipe"]["batch_size"] in (512, 1024)


def test_cpu_trained_references_are_what_the_training_script_makes_within_15_minutes():
    """A CPU-trained reference's recipe and epochs are REFERENCES' (so `--only NAME` rebuilds it), in <= 15 min."""
    script = load_script("benchmarks/train_references.py")
    cpu = [cu.pretrained_info(n) for n in pt.pretrained_names(pt.AUTOENCODER)
           if cu.pretrained_info(n).get("device") != "cuda"]
    assert {r["name"] for r in cpu} >= {"fashion-mnist-196", "cifar10-64", "cifar10-128"}
    for row in cpu:
        spec = script.REFERENCES[row["name"]]
        assert row["recipe"] == {**script.RECIPE, **spec.get("recipe", {})}, row["name"]
        assert row["epochs"] == spec["epochs"] and row["wall_seconds"] <= 15 * 60, row["name"]
        assert "2 cores" in row["machine"] and "train_references.py --only" in row["command"]
        if row["recipe"].get("augment"):
            assert row["recipe"]["augment"] in script.AUGMENTS


@pytest.fixture
def shelf(tmp_path, monkeypatch):
    """A temporary pretrained folder holding one small trained-looking model and its manifest row."""
    monkeypatch.setattr(pt, "PRETRAINED_DIR", tmp_path)
    monkeypatch.setattr(pt, "MANIFEST", tmp_path / "manifest.json")
    arch = dict(image_size=16, in_channels=1, widths=[4, 8], latent=2, bottleneck="spatial", batch_norm=True)
    torch.manual_seed(0)
    model = cu.ConvAutoencoder(**arch)
    digest = pt.save_reference(model, tmp_path / "tiny.pt")
    row = {"name": "tiny", "file": "tiny.pt", "sha256": digest, "architecture": arch, "epochs": 3,
           "test_mse": 0.01, "test_psnr": 20.0, "code_size": model.code_size}
    (tmp_path / "manifest.json").write_text(json.dumps({"models": [row]}))
    return tmp_path, model, row


def test_loading_gives_the_stored_half_precision_weights(shelf):
    _, model, _ = shelf
    loaded = cu.load_pretrained("tiny")
    x = torch.rand(2, 1, 16, 16)
    with cu.eval_mode(model):
        expected = model.half().float()(x)
    assert torch.allclose(loaded(x), expected, atol=1e-6)


def test_large_batch_norm_statistics_survive_storage(shelf, tmp_path):
    """float16 ends at 65,504: a running variance above it must not be stored as infinity."""
    _, model, _ = shelf
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var.fill_(3e5)
    pt.save_reference(model, tmp_path / "big.pt")
    state = torch.load(tmp_path / "big.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert state["encoder.0.weight"].dtype == torch.float16  # the parameters are what halves the file


def test_an_altered_file_is_refused_with_the_retrain_command(shelf):
    folder, _, _ = shelf
    data = bytearray((folder / "tiny.pt").read_bytes())
    data[-20] ^= 0xFF
    (folder / "tiny.pt").write_bytes(bytes(data))
    with pytest.raises(pt.PretrainedError, match="does not match the manifest.*train_references.py --only tiny"):
        cu.load_pretrained("tiny")


def test_a_missing_file_is_reported_and_has_pretrained_says_no(shelf):
    folder, _, _ = shelf
    (folder / "tiny.pt").unlink()
    assert not cu.has_pretrained("tiny")
    with pytest.raises(pt.PretrainedError, match="is missing.*train_references.py --only tiny"):
        cu.load_pretrained("tiny")


def test_a_changed_architecture_is_reported(shelf):
    folder, _, row = shelf
    row["architecture"]["latent"] = 3  # the model code now builds a different bottleneck
    (folder / "manifest.json").write_text(json.dumps({"models": [row]}))
    with pytest.raises(pt.PretrainedError, match="no longer fits its recorded architecture"):
        cu.load_pretrained("tiny")


def test_an_unknown_name_lists_the_known_ones(shelf):
    with pytest.raises(cu.CourseError, match="Known references: tiny"):
        cu.load_pretrained("tinny")


def test_load_or_train_says_which_happened(shelf, capsys):
    model, what = cu.load_or_train("tiny", train=lambda: pytest.fail("must not train when the reference is there"))
    assert what.startswith("loaded reference 'tiny'") and "Loaded reference 'tiny'" in capsys.readouterr().out
    (shelf[0] / "tiny.pt").unlink()
    trained = torch.nn.Linear(1, 1)
    model, what = cu.load_or_train("tiny", train=lambda: trained)
    assert model is trained and "not present" in what and "not present" in capsys.readouterr().out


def test_retraining_keeps_the_shipped_reference_when_it_is_better_on_validation(shelf, tmp_path, monkeypatch):
    """--only writes a new model only if its validation MSE is not higher than the shipped one's (or --replace)."""
    data_policy.require_dataset("fashion-mnist")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    script = load_script("benchmarks/train_references.py")
    monkeypatch.setattr(script, "CHECK_IMAGES", 100)
    folder, _, tiny = shelf
    shipped = dict(tiny, name="fashion-mnist-196", val_mse=1e-6)  # no model one epoch on 256 images can beat
    (folder / "manifest.json").write_text(json.dumps({"models": [tiny, shipped]}))
    spec = dict(script.REFERENCES["fashion-mnist-196"], epochs=1)
    row = script.train_reference("fashion-mnist-196", spec, tmp_path / "work", "test", train_images=256)
    assert row is None and not (folder / "fashion-mnist-196.pt").exists()
    row = script.train_reference("fashion-mnist-196", spec, tmp_path / "work2", "test", train_images=256, replace=True)
    assert row["val_mse"] > 1e-6 and (folder / "fashion-mnist-196.pt").is_file()


def test_select_scores_candidates_on_the_validation_split_with_their_recipe(monkeypatch):
    data_policy.require_dataset("fashion-mnist")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    script = load_script("benchmarks/train_references.py")
    rows = script.select("fashion-mnist-196", 2, 256, ("spatial, width 32",), batch_size=64)
    (row,) = rows
    assert row["split"] == "validation" and row["train_images"] == 256 and row["recipe"]["batch_size"] == 64
    assert len(row["val_mse_by_epoch"]) == 2 and row["val_mse"] == row["val_mse_by_epoch"][-1] > 0
    assert "augment" not in row["recipe"]


def test_the_training_script_writes_a_loadable_reference(shelf, tmp_path, monkeypatch):
    """benchmarks/train_references.py end to end on 256 images for one epoch: weights, manifest row, loading."""
    data_policy.require_dataset("fashion-mnist")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))  # its `import _common`
    script = load_script("benchmarks/train_references.py")
    monkeypatch.setattr(script, "CHECK_IMAGES", 100)
    row = script.train_reference("fashion-mnist-196", dict(script.REFERENCES["fashion-mnist-196"], epochs=1),
                                 tmp_path / "work", "python benchmarks/train_references.py --test", train_images=256)
    script.write_manifest({"fashion-mnist-196": row})
    assert row["train_images"] == 256 and row["epochs"] == 1 and row["code_size"] == 196
    assert row["sha256"] == pt.file_sha256(pt.PRETRAINED_DIR / row["file"])
    model = cu.load_pretrained("fashion-mnist-196")
    check = cu.evaluate(model, cu.load_dataset("fashion-mnist", "test").subset(100), ssim=False)
    assert check["mse"] == pytest.approx(row["check_mse"], rel=TOLERANCE)
    assert 0 < row["test_mse"] < 0.2 and row["pca_test_mse"] > 0
    table = script.report()
    ratio = row["test_mse"] / row["pca_test_mse"]
    assert f"beats PCA by at least 25%: **{'met' if ratio <= 0.75 else 'missed'}**" in table
    assert f"| `fashion-mnist-196` | 196 | spatial, 64 |" in table


# ---------------------------------------------------------------- chapter 12's VAE references
def vae_script(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    return load_script("benchmarks/train_vae_references.py")


@pytest.mark.parametrize("name", pt.pretrained_names("VAE"))
def test_vae_reference_loads_with_the_chapters_class_and_reproduces_its_recorded_score(name, monkeypatch):
    from course_utils.chapters.ch12_vae import VAE
    row = cu.pretrained_info(name)
    assert row["bytes"] <= 5_000_000 and row["module"] == VAE.__module__
    assert row["val_bits_per_dim"] == min(row["val_bits_per_dim_by_epoch"]) == \
        row["val_bits_per_dim_by_epoch"][row["epochs"] - 1]  # the best validation epoch is the one shipped
    script = vae_script(monkeypatch)
    spec = script.VAE_REFERENCES[name]
    assert row["architecture"]["latent"] == spec["latent"] and row["beta"] == spec["beta"]
    assert row["epochs_trained"] == spec["epochs"] and "train_vae_references.py" in row["command"]
    data_policy.require_dataset(row["dataset"])
    model = cu.load_pretrained(name, build=VAE)
    assert isinstance(model, VAE) and not model.training
    test = cu.load_dataset(row["dataset"], "test")
    assert script.reconstruction_mse(model, test.subset(row["check_images"]).images) == \
        pytest.approx(row["check_mse"], rel=TOLERANCE)


def vae_row(folder: Path) -> dict:
    """Store a tiny untrained chapter 12 VAE as reference 'tiny-vae' on the shelf; return its row."""
    from course_utils.chapters.ch12_vae import VAE
    arch = {"image_shape": [1, 28, 28], "latent": 2, "width": 4, "code_channels": 2}
    digest = pt.save_reference(VAE(**arch), folder / "tiny-vae.pt")
    return {"name": "tiny-vae", "model": "VAE", "module": VAE.__module__, "file": "tiny-vae.pt", "sha256": digest,
            "architecture": arch, "epochs": 2, "test_bits_per_dim": 5.4321,
            "retrain": "python benchmarks/train_vae_references.py --only {name}"}


def test_a_vae_reference_needs_its_class_and_says_how_to_pass_it(shelf, capsys):
    from course_utils.chapters.ch12_vae import VAE
    folder, _, tiny = shelf
    (folder / "manifest.json").write_text(json.dumps({"models": [tiny, vae_row(folder)]}))
    assert pt.pretrained_names("VAE") == ["tiny-vae"] and pt.pretrained_names(pt.AUTOENCODER) == ["tiny"]
    with pytest.raises(pt.PretrainedError, match=r"build=.*from course_utils.chapters.ch12_vae import VAE"):
        cu.load_pretrained("tiny-vae")
    model, what = cu.load_or_train("tiny-vae", train=lambda: pytest.fail("must not train"), build=VAE)
    assert isinstance(model, VAE) and "5.43 bits/dim" in capsys.readouterr().out
    (folder / "tiny-vae.pt").unlink()
    with pytest.raises(pt.PretrainedError, match="train_vae_references.py --only tiny-vae"):
        cu.load_pretrained("tiny-vae", build=VAE)


def test_the_vae_training_script_keeps_the_best_validation_epoch_and_writes_a_loadable_reference(
        shelf, tmp_path, monkeypatch):
    """benchmarks/train_vae_references.py end to end on 256 images for two epochs, then resumed to three."""
    from course_utils.chapters.ch12_vae import VAE
    data_policy.require_dataset("fashion-mnist")
    script = vae_script(monkeypatch)
    monkeypatch.setattr(script, "CHECK_IMAGES", 100)
    spec = dict(script.VAE_REFERENCES["fashion-mnist-vae"], epochs=2, width=4, code_channels=2, latent=4)
    row = script.train_reference("fashion-mnist-vae", spec, tmp_path / "work", "test", train_images=256)
    assert row["train_images"] == 256 and row["epochs_trained"] == 2 and row["model"] == "VAE"
    assert row["val_bits_per_dim"] == pytest.approx(min(row["val_bits_per_dim_by_epoch"]), abs=0.01)  # float16
    assert 0 < row["test_bits_per_dim"] < 12 and row["test_kl_nats"] >= 0
    script.refs.write_manifest({"fashion-mnist-vae": row})
    model = cu.load_pretrained("fashion-mnist-vae", build=VAE)
    test = cu.load_dataset("fashion-mnist", "test").subset(100)
    assert script.reconstruction_mse(model, test.images) == pytest.approx(row["check_mse"], rel=TOLERANCE)
    assert f"| `fashion-mnist-vae` | 4, 4, 0.25 | {row['parameters']:,} |" in script.report()
    # an interrupted run resumes from its checkpoint: one more epoch, not three
    resumed = script.train_reference("fashion-mnist-vae", dict(spec, epochs=3), tmp_path / "work", "test",
                                     replace=True, train_images=256)
    assert resumed["val_bits_per_dim_by_epoch"][:2] == row["val_bits_per_dim_by_epoch"]
    assert len(resumed["val_bits_per_dim_by_epoch"]) == 3
